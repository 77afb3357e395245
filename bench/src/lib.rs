//! spate-bench: experiments that measure spate against limits measured in the same run
//! (memory copy, raw socket transfer), reported as ratios, with latency histograms.
#![forbid(unsafe_code)]

/// Sizes on the command line, in the job spec's units (`8GiB`, `4MiB`, `1.5GB`, `12345`): see
/// [`spate_scheduler::spec::parse_size`]. Zero is refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    match spate_scheduler::spec::parse_size(s) {
        Ok(0) => Err(format!("{s:?} must be more than zero")),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// Pin the calling thread to the first (`last == false`) or last usable core, so that the two
/// sides of a two-process benchmark run on different cores (thread-per-core, as the daemons
/// do). On a single-core machine, or when pinning fails, it says so and runs unpinned.
pub fn pin_one_side(last: bool) {
    let cores = all_cores();
    let core = if last { cores.last() } else { cores.first() };
    if cores.len() >= 2
        && let Some(&c) = core
        && let Err(e) = spate_runtime::thread::pin_current(c)
    {
        eprintln!("spate bench: not pinned: {e}");
    }
}

/// The cores this process may use, as it started (before any thread pinned itself).
pub fn all_cores() -> Vec<usize> {
    static ALL: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    ALL.get_or_init(spate_runtime::thread::available_cores)
        .clone()
}

/// Undo [`pin_one_side`]: the calling thread may run on every core again, as the threads of a
/// plain program do.
pub fn unpin() {
    if let Err(e) = spate_runtime::thread::allow_cores(&all_cores()) {
        eprintln!("spate bench: cannot unpin: {e}");
    }
}

pub mod cluster;
pub mod local;
pub mod net;
pub mod policy;
pub mod ring;
pub mod rip;
pub mod sched;
pub mod sim;

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_use_the_spec_units_and_refuse_zero() {
        assert_eq!(super::parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(super::parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(super::parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(super::parse_size("12345"), Ok(12345));
        assert!(
            super::parse_size("0")
                .unwrap_err()
                .contains("more than zero")
        );
        assert!(
            super::parse_size("4XB")
                .unwrap_err()
                .contains("unknown unit")
        );
    }
}
