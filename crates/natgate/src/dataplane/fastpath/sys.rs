//! The bpf(2) commands `aya` does not offer: `BPF_PROG_TEST_RUN`, which runs the loaded
//! program on a frame without a network (so the differential test can compare it with the
//! engine), and the batch updates and deletions that let a worker change many table entries in
//! one system call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::Hook;

/// Commands of `enum bpf_cmd`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Runs one batch command over `count` entries; how many the kernel processed (it stops at
/// the first entry it refuses, and says how far it got).
fn batch(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: u64,
    values: u64,
    count: usize,
) -> (usize, io::Result<()>) {
    let Ok(n) = u32::try_from(count) else {
        return (0, Err(io::ErrorKind::InvalidInput.into()));
    };
    let mut attr = BatchAttr {
        keys,
        values,
        count: n,
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` for a batch command; the kernel reads `count` keys
    // (and values) of the map's sizes from the caller's slices, which outlive the call, and
    // writes back only `attr.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    let done = (attr.count as usize).min(count);
    if rc < 0 {
        (done, Err(io::Error::last_os_error()))
    } else {
        (count, Ok(()))
    }
}

/// Inserts or replaces `keys[i] -> values[i]` in the hash map `map` in one system call; how
/// many were written, and the error that stopped it, if any.
pub fn update_batch<K, V>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> (usize, io::Result<()>) {
    let count = keys.len().min(values.len());
    batch(
        BPF_MAP_UPDATE_BATCH,
        map,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        count,
    )
}

/// Deletes `keys` from the hash map `map` in one system call; how many were deleted before
/// the first that was not there (or another error) stopped it.
pub fn delete_batch<K>(map: BorrowedFd<'_>, keys: &[K]) -> (usize, io::Result<()>) {
    batch(
        BPF_MAP_DELETE_BATCH,
        map,
        keys.as_ptr() as u64,
        0,
        keys.len(),
    )
}

/// `union bpf_attr`'s `test` member, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// Size of `struct __sk_buff` and the offset of its `ingress_ifindex` (UAPI, stable).
const SK_BUFF_LEN: usize = 192;
const INGRESS_IFINDEX_AT: usize = 36;
/// Size of `struct xdp_md` and the offsets of its `data_end` and `ingress_ifindex`.
const XDP_MD_LEN: usize = 24;
const XDP_DATA_END_AT: usize = 4;
const XDP_INGRESS_IFINDEX_AT: usize = 12;

/// What one run gave: the program's return code and the frame as it left the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// `TC_ACT_*` or `XDP_*`.
    pub retval: u32,
    /// The frame after the program.
    pub frame: Vec<u8>,
}

/// Runs the program `prog_fd` (attached at `hook`) once on `frame`, as if it arrived on
/// `ingress_ifindex`. For XDP that must be an interface of the caller's network namespace; the
/// kernel does not check it for TC.
pub fn test_run(
    prog_fd: i32,
    hook: Hook,
    frame: &[u8],
    ingress_ifindex: u32,
) -> io::Result<TestRun> {
    let mut out = vec![0u8; frame.len() + 256];
    let too_long = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let mut ctx = [0u8; SK_BUFF_LEN];
    let ctx_len = match hook {
        Hook::Tc => {
            ctx[INGRESS_IFINDEX_AT..INGRESS_IFINDEX_AT + 4]
                .copy_from_slice(&ingress_ifindex.to_ne_bytes());
            SK_BUFF_LEN
        }
        Hook::Xdp => {
            // The frame starts at offset 0 (no metadata) and ends at its length.
            let end = u32::try_from(frame.len()).map_err(too_long)?;
            ctx[XDP_DATA_END_AT..XDP_DATA_END_AT + 4].copy_from_slice(&end.to_ne_bytes());
            ctx[XDP_INGRESS_IFINDEX_AT..XDP_INGRESS_IFINDEX_AT + 4]
                .copy_from_slice(&ingress_ifindex.to_ne_bytes());
            XDP_MD_LEN
        }
    };
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(prog_fd).map_err(too_long)?,
        data_size_in: u32::try_from(frame.len()).map_err(too_long)?,
        data_size_out: u32::try_from(out.len()).map_err(too_long)?,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx_len as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for this command, zeroed beyond the fields
    // set; the kernel reads `data_size_in` bytes from `frame` and `ctx_size_in` from `ctx`,
    // writes at most `data_size_out` bytes to `out`, and all three outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        retval: attr.retval,
        frame: out,
    })
}
