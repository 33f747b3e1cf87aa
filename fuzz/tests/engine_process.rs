//! The `engine_process` fuzz body on stable: the seed corpus, then pseudo-random inputs.

use natgate_fuzz::engine_process::{Reached, run};

/// xorshift64*: inputs without a dependency, the same on every run.
struct Inputs(u64);

impl Inputs {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn input(&mut self) -> Vec<u8> {
        let len = (self.next_u64() % 2048) as usize;
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/engine_process");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("seed corpus")
        .map(|f| f.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("seed"))
        .collect()
}

#[test]
fn seed_corpus_gets_deep() {
    let seeds = corpus();
    assert!(seeds.len() >= 4, "a handful of seeds");
    let mut all = Reached::default();
    for s in &seeds {
        let r = run(s);
        all.forwarded[0] += r.forwarded[0];
        all.forwarded[1] += r.forwarded[1];
        all.replies += r.replies;
        all.held += r.held;
        all.transmits += r.transmits;
    }
    assert!(all.forwarded[0] > 0 && all.forwarded[1] > 0, "{all:?}");
    assert!(
        all.replies > 0 && all.held > 0 && all.transmits > 0,
        "{all:?}"
    );
}

/// A poor man's fuzzer: seeds with bytes changed, inserted, cut or spliced, plus plain random
/// inputs. `NATGATE_FUZZ_ITERATIONS` sets the count (default 3000; try a million in release).
#[test]
fn mutated_seeds_and_random_inputs() {
    let n: u64 = std::env::var("NATGATE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seeds = corpus();
    let mut r = Inputs(0x6e61_7467_6174_6521);
    for _ in 0..n {
        let mut v = seeds[(r.next_u64() % seeds.len() as u64) as usize].clone();
        match r.next_u64() % 5 {
            0 => v = r.input(),
            1 => {
                let other = &seeds[(r.next_u64() % seeds.len() as u64) as usize];
                let at = (r.next_u64() % (v.len() as u64 + 1)) as usize;
                v.truncate(at);
                v.extend_from_slice(&other[(r.next_u64() % other.len() as u64) as usize..]);
            }
            _ => {
                for _ in 0..1 + r.next_u64() % 8 {
                    let at = (r.next_u64() % (v.len() as u64 + 1)) as usize;
                    let byte = r.next_u64() as u8;
                    match r.next_u64() % 3 {
                        0 if at < v.len() => v[at] = byte,
                        1 if at < v.len() => {
                            v.remove(at);
                        }
                        _ => v.insert(at, byte),
                    }
                }
            }
        }
        run(&v);
    }
}

/// The seeds again with the DS-Lite bit of `preset` (the input's first byte) set: their inside
/// packets come from B4s, and between them they get through the softwires both ways.
#[test]
fn seeds_through_softwires_get_deep() {
    let mut all = Reached::default();
    for mut s in corpus() {
        if let Some(preset) = s.first_mut() {
            *preset |= 0x40;
        }
        let r = run(&s);
        all.forwarded[0] += r.forwarded[0];
        all.forwarded[1] += r.forwarded[1];
        all.to_b4 += r.to_b4;
    }
    assert!(all.forwarded[0] > 0 && all.to_b4 > 0, "{all:?}");
}
