//! Builds the standard topology, prints its suffix, keeps it for N seconds (default 60, at most
//! 1800) or until stdin closes, then tears it down: for poking at natgate by hand.

#![allow(clippy::print_stdout)]

use std::io::Read;
use std::time::Duration;

use natgate::lab::topology::{Topology, TopologyOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .min(1800);
    let t = Topology::build(&TopologyOptions::default())?;
    println!("{}", t.suffix);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while let Ok(n) = std::io::stdin().read(&mut b) {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(secs));
    t.teardown()?;
    Ok(())
}
