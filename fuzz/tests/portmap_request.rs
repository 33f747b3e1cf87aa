//! The `portmap_request` fuzz body on stable: valid PCP and NAT-PMP requests with random
//! damage, then pure noise.

use natgate_fuzz::portmap_request::run;

/// A PCP MAP for UDP port 5000 from 100.64.0.10, with a FILTER and PREFER_FAILURE.
fn pcp_map() -> Vec<u8> {
    let mut v = vec![2, 1, 0, 0, 0, 0, 0x0e, 0x10];
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 100, 64, 0, 10]);
    v.extend_from_slice(&[1; 12]);
    v.extend_from_slice(&[17, 0, 0, 0, 0x13, 0x88, 0, 0]);
    v.extend_from_slice(&[0; 16]);
    v.extend_from_slice(&[3, 0, 0, 20, 0, 128, 0, 0]);
    v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 10]);
    v.extend_from_slice(&[2, 0, 0, 0]);
    v
}

#[test]
fn seeds_and_random_inputs() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let seeds: Vec<Vec<u8>> = vec![
        pcp_map(),
        vec![0, 0],
        vec![0, 1, 0, 0, 0x13, 0x88, 0, 0, 0, 0, 0, 60],
        vec![0, 2, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0],
    ];
    for round in 0..800u32 {
        let mut data = vec![(round % 8) as u8];
        for _ in 0..1 + next() % 6 {
            let mut req = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..next() % 4 {
                let i = (next() % req.len() as u64) as usize;
                req[i] = next() as u8;
            }
            if next() % 5 == 0 {
                req.truncate((next() % req.len() as u64) as usize);
            }
            data.push(req.len() as u8);
            data.extend_from_slice(&req);
        }
        run(&data);
        let noise: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
        run(&noise);
    }
}
