//! Builds the in-kernel fast path (`bpf/fastpath.bpf.c`) from source with clang.
//!
//! Without clang (or libbpf's headers) natgate still builds: the object is left empty and the
//! daemon says at start that the fast path was not built, running the slow path alone. CI
//! installs both (`.ci/run`), so there the fast path is always built and tested.

#![allow(clippy::expect_used)] // a build script reports what it cannot do by panicking

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/fastpath.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("fastpath.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_include = format!(
        "-I/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(&arch_include)
        .args(["-c", src, "-o"])
        .arg(&obj)
        .output();
    let why = match result {
        Ok(o) if o.status.success() => {
            println!("cargo:rustc-env=NATGATE_FASTPATH_BUILD=");
            return;
        }
        Ok(o) => format!(
            "{clang} failed on {src}: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
        ),
        Err(e) => format!("{clang} not found ({e}); install clang and libbpf-dev"),
    };
    println!("cargo:warning=the in-kernel fast path is not built: {why}");
    std::fs::write(&obj, b"").expect("write an empty object");
    println!("cargo:rustc-env=NATGATE_FASTPATH_BUILD={why}");
}
