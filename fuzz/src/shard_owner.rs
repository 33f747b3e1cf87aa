//! The body of the `shard_owner` target: which worker owns an arbitrary packet, for every
//! ownership rule and side, with and without static claims. It must never panic, must name a
//! worker that exists, and must agree with the port split for what the engine reads as a
//! TCP or UDP packet from outside.

use natgate_core::shard::{Ownership, STATIC_OWNER, StaticSteer, Steering, block_owner};
use natgate_core::{Side, rules::RuleChain};

/// A port forward and a 1:1 rule, so that static claims are exercised.
const RULES: &str = "[[rule]]\nid = 1\ndirection = \"inbound\"\nproto = \"tcp\"\n\
    dst = \"198.51.100.80/32\"\ndst-ports = 80\n\
    action.translate.dst = { addr = \"100.64.0.11/32\", port = 8888 }\n\
    [[rule]]\nid = 2\ndirection = \"outbound\"\nsrc = \"100.64.0.10/32\"\n\
    action.translate.src = { addr = \"198.51.100.10/32\" }\n";

/// Runs one input. The first byte picks the number of workers (2 to 5).
pub fn run(data: &[u8]) {
    let Some((&first, pkt)) = data.split_first() else {
        return;
    };
    let n = 2 + usize::from(first % 4);
    #[derive(serde::Deserialize)]
    struct File {
        rule: RuleChain,
    }
    let Ok(file) = toml::from_str::<File>(RULES) else {
        panic!("the fixed rules parse");
    };
    let claims = StaticSteer::new(&file.rule, &[], 1);
    let steering = Steering::new(n, Ownership::Blocks64);
    for side in [Side::Inside, Side::Outside] {
        for statics in [&StaticSteer::none(), &claims] {
            if let Some(w) = steering.owner(side, pkt, statics) {
                assert!(w < n, "worker {w} of {n}");
            }
        }
        // The same packet always goes to the same worker.
        assert_eq!(
            steering.owner(side, pkt, &claims),
            steering.owner(side, pkt, &claims)
        );
    }
    // A whole TCP or UDP packet from outside that the engine reads goes to its port's block.
    let plain = pkt.len() >= 24
        && pkt[0] == 0x45
        && matches!(pkt[9], 6 | 17)
        && u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff == 0;
    if plain && let Some(w) = steering.owner(Side::Outside, pkt, &StaticSteer::none()) {
        let dport = u16::from_be_bytes([pkt[22], pkt[23]]);
        assert_eq!(w, block_owner(dport, n));
        let claimed = steering.owner(Side::Outside, pkt, &claims);
        assert!(claimed == Some(w) || claimed == Some(STATIC_OWNER));
    }
}
