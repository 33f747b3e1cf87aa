//! The `shard_owner` fuzz body on stable: the engine's seed packets, then pseudo-random ones.

use natgate_fuzz::shard_owner::run;

#[test]
fn seeds_and_random_inputs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/engine_process");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("seed corpus")
        .map(|f| std::fs::read(f.expect("entry").path()).expect("seed"))
        .collect();
    // Plain headers with random fields, so that many inputs parse.
    for _ in 0..5_000 {
        let len = 20 + (next() % 80) as usize;
        let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] &= 0x40;
        p[7] = 0;
        p[9] = [1, 6, 17][(next() % 3) as usize];
        p[10..12].copy_from_slice(&[0, 0]);
        let mut sum = 0u32;
        for w in p[..20].chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        inputs.push(p);
    }
    for i in inputs {
        for first in 0..4u8 {
            let mut data = vec![first];
            data.extend_from_slice(&i);
            run(&data);
        }
    }
}
