//! `natgate --version` names the commit the binary was built from, so an operator can tell
//! which build runs. No root needed.

#![allow(clippy::expect_used, missing_docs)]

use std::process::Command;

#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_natgate"))
        .arg("--version")
        .output()
        .expect("run natgate");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).expect("UTF-8");
    let pkg = env!("CARGO_PKG_VERSION");
    // The tests are built from the same tree: a git checkout, or not (a tarball).
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let want = match head {
        Some(c) => format!("natgate {pkg} (commit {c})\n"),
        None => format!("natgate {pkg}\n"),
    };
    assert_eq!(line, want);
}
