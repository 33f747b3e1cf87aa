//! The `stun_message` fuzz body on stable: valid requests with random damage, then noise.

use natgate_fuzz::stun_message::run;

/// A Binding request with CHANGE-REQUEST (address and port), RESPONSE-PORT and SOFTWARE.
fn request() -> Vec<u8> {
    let mut v = vec![0x00, 0x01, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42];
    v.extend_from_slice(&[5; 12]);
    v.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x06]);
    v.extend_from_slice(&[0x00, 0x27, 0x00, 0x04, 0x15, 0xb3, 0, 0]);
    v.extend_from_slice(&[0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0]);
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
    for first in 0..8u8 {
        let mut input = vec![first];
        input.extend_from_slice(&request());
        run(&input);
        for _ in 0..500 {
            let mut damaged = input.clone();
            for _ in 0..1 + next() % 4 {
                let at = 1 + (next() as usize) % (damaged.len() - 1);
                damaged[at] ^= next() as u8;
            }
            run(&damaged);
        }
    }
    for _ in 0..2000 {
        let len = (next() % 64) as usize;
        let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        run(&noise);
    }
}
