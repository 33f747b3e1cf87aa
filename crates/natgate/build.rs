//! Builds the in-kernel fast path (`bpf/fastpath.bpf.c`) from source with clang, and names the
//! commit natgate is built from for `natgate --version`.
//!
//! Without clang (or libbpf's headers) natgate still builds: the object is left empty and the
//! daemon says at start that the fast path was not built, running the slow path alone. CI
//! installs both (`.ci/run`), so there the fast path is always built and tested.
//!
//! Outside a git checkout (a source tarball, a crate package) or without git, the version is
//! the crate's alone: the commit is a convenience, never a reason for a build to fail.

#![allow(clippy::expect_used)] // a build script reports what it cannot do by panicking

use std::path::PathBuf;
use std::process::Command;

fn main() {
    version();
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

/// Sets `NATGATE_VERSION`: the crate's version, and the commit when this crate is built from
/// a git checkout of it, `0.1.0 (commit 3336224)`.
fn version() {
    let pkg = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let version = match commit() {
        Some(c) => format!("{pkg} (commit {c})"),
        None => pkg,
    };
    println!("cargo:rustc-env=NATGATE_VERSION={version}");
}

/// The short hash of HEAD, if this crate's own files are tracked by the repository around it
/// (a tarball unpacked inside some other repository must not take that repository's commit).
/// Asks cargo to run this again when HEAD moves.
fn commit() -> Option<String> {
    println!("cargo:rerun-if-env-changed=GIT_DIR");
    let git = |args: &[&str]| -> Option<String> {
        let o = Command::new("git").args(args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    git(&["ls-files", "--error-unmatch", "build.rs"])?;
    // HEAD names a branch (or a commit); the branch's ref is a loose file or in packed-refs.
    // In a worktree HEAD is the worktree's own and refs are in the common directory.
    let git_dir = PathBuf::from(git(&["rev-parse", "--git-dir"])?);
    let common = PathBuf::from(git(&["rev-parse", "--git-common-dir"])?);
    let mut watch = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(common.join(r));
    }
    // A path that does not exist would make cargo run this script on every build.
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    git(&["rev-parse", "--short", "HEAD"]).filter(|c| !c.is_empty())
}
