//! Helpers for the crate's own tests.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io;
use std::path::Path;

/// Removes a directory when dropped.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs `f` on a new directory with a 16 KiB tmpfs on it, mounted in a mount namespace of
/// a thread of its own: the mount goes with the thread, pass or fail, and nobody else sees
/// it. `None` (skipped) without root.
pub fn on_a_small_tmpfs<T: Send>(f: impl FnOnce(&Path) -> T + Send) -> Option<T> {
    use std::ffi::CString;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // One directory per call: tests run in parallel in one process.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("natgate-full-disk-{}-{n}", std::process::id()));
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_NEWNS) takes this thread (not the process) into a new
            // mount namespace; no pointers are passed.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0);
            let root = CString::new("/").expect("path");
            // SAFETY: valid NUL-terminated strings or null where mount(2) allows it.
            let r = unsafe {
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            std::fs::create_dir_all(&dir).expect("mkdir");
            let _rm = RemoveDir(dir.clone());
            let target = CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
            let fs = CString::new("tmpfs").expect("fs");
            let opts = CString::new("size=16k").expect("opts");
            // SAFETY: valid NUL-terminated strings; `opts` is tmpfs's text data.
            let r = unsafe {
                libc::mount(
                    fs.as_ptr(),
                    target.as_ptr(),
                    fs.as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            let out = f(&dir);
            // SAFETY: a valid path; the mount is ours.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            out
        })
        .join()
        .ok()
    })
}
