//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to Unix time.

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, sampled once.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    realtime_minus_monotonic_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn sample() -> Self {
        let realtime = now_ns(libc::CLOCK_REALTIME);
        let monotonic = now_ns(libc::CLOCK_MONOTONIC);
        Self {
            realtime_minus_monotonic_ns: realtime - monotonic,
        }
    }

    /// A clock whose Unix time equals monotonic time; for tests.
    pub fn identity() -> Self {
        Self {
            realtime_minus_monotonic_ns: 0,
        }
    }

    /// Current CLOCK_MONOTONIC in nanoseconds, the kernel programs' clock.
    pub fn monotonic_now_ns() -> u64 {
        now_ns(libc::CLOCK_MONOTONIC) as u64
    }

    /// Unix time in nanoseconds of a kernel timestamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns).max(0) as u64
    }
}
