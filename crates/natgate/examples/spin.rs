//! A CPU-time probe for the data-plane benchmark: how much of one core the rest of the system
//! takes, softirq included, measured from the outside.
//!
//! ```text
//! spin SECONDS              # spinner: prints iterations per second, median and mean
//! spin burn SECONDS PERCENT # known load: busy PERCENT % of every 10 ms, prints its CPU share
//! ```
//!
//! The spinner lowers itself to `SCHED_IDLE` (and nice 19, in case that is refused) and counts
//! iterations of a register-only loop, so it runs exactly when nothing else on its core wants
//! to: every nanosecond taken by another task, by an interrupt or by softirq work (which this
//! kernel's `/proc/stat` undercounts: no IRQ time accounting, tickless idle) is a nanosecond of
//! lost iterations. Pin it to the core under test (`taskset -c 1`); the share of that core the
//! load took is `1 - rate_loaded / rate_idle`.
//!
//! It prints two rates: the median over 10 ms slices and the mean over the whole run. With a
//! steady load they agree; on a machine where other work comes and goes (someone compiling on
//! the same core) the median ignores the slices it took, as long as they are under half.
//!
//! `burn` is the check on the method: a normal-priority task that is busy for a known share of
//! each 10 ms period, measured by its own thread CPU clock (the scheduler's exact runtime, not
//! ticks). It prints that share; a spinner on the same core should lose the same share.
//! Bounded: at most 60 s.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Iterations between clock reads (a few microseconds of work).
const CHUNK: u64 = 4096;
/// Length of the slices whose median rate is reported.
const SLICE: Duration = Duration::from_millis(10);

fn seconds(arg: Option<&String>) -> Duration {
    let s = arg
        .and_then(|a| a.parse::<f64>().ok())
        .unwrap_or(1.0)
        .clamp(0.01, 60.0);
    Duration::from_secs_f64(s)
}

/// This thread's CPU time (the scheduler's runtime, in nanoseconds).
fn thread_cpu() -> Duration {
    // SAFETY: zeroed timespec is valid; clock_gettime writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn spin(dur: Duration) {
    // SAFETY: plain setpriority(2) on this process.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    // SAFETY: zeroed sched_param (priority 0) is what SCHED_IDLE requires.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: valid policy and pointer, this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        eprintln!(
            "spin: SCHED_IDLE refused ({}), running at nice 19",
            std::io::Error::last_os_error()
        );
    }
    let start = Instant::now();
    let end = start + dur;
    let mut x: u64 = 1;
    let mut iters: u64 = 0;
    let mut slices: Vec<f64> = Vec::with_capacity(6001);
    let (mut slice_start, mut slice_iters) = (start, 0u64);
    loop {
        for _ in 0..CHUNK {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        iters += CHUNK;
        slice_iters += CHUNK;
        let now = Instant::now();
        let in_slice = now.duration_since(slice_start);
        if in_slice >= SLICE {
            slices.push(slice_iters as f64 / in_slice.as_secs_f64());
            (slice_start, slice_iters) = (now, 0);
        }
        if now >= end {
            break;
        }
    }
    let mean = iters as f64 / start.elapsed().as_secs_f64();
    slices.sort_by(f64::total_cmp);
    let median = slices.get(slices.len() / 2).copied().unwrap_or(mean);
    println!("{median:.0} {mean:.0}");
}

fn burn(dur: Duration, percent: f64) {
    let period = Duration::from_millis(10);
    let busy = period.mul_f64(percent.clamp(0.0, 100.0) / 100.0);
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut x: u64 = 1;
    let mut next = start;
    while next < start + dur {
        let c0 = thread_cpu();
        while thread_cpu() - c0 < busy {
            for _ in 0..64 {
                x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        next += period;
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
    let share = (thread_cpu() - cpu0).as_secs_f64() / start.elapsed().as_secs_f64();
    println!("{share:.4}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("burn") => {
            let pct = args
                .get(3)
                .and_then(|a| a.parse::<f64>().ok())
                .unwrap_or(25.0);
            burn(seconds(args.get(2)), pct);
        }
        Some(_) => spin(seconds(args.get(1))),
        None => {
            eprintln!("usage: spin SECONDS | spin burn SECONDS PERCENT");
            std::process::exit(2);
        }
    }
}
