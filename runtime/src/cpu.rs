//! What CPU this process has used and how much it may use: its CPU time so far, and its
//! allowance in CPUs (a cgroup CPU quota, v2 `cpu.max` or v1 `cpu.cfs_quota_us` /
//! `cpu.cfs_period_us`, else the CPUs it may run on). A producer divides the CPU time a task
//! cost by the allowance to tell the scheduler how long the task holds it when the CPU, not
//! one thread, is what limits it (a throttled producer spends much of a small chunk's cost
//! outside the kernel's call: messages, sockets, the network stack).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// CPU time used by every thread of this process so far (None if the clock is missing).
pub fn process_time() -> Option<Duration> {
    let t = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).ok()?;
    Some(Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}

/// CPUs this process may use: its cgroup quota when it has one, at most the CPUs it may run
/// on; at least 0.001.
pub fn allowance() -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let quota = match (
        read(Path::new("/proc/self/cgroup")),
        read(Path::new("/proc/self/mountinfo")),
    ) {
        (Some(cg), Some(mi)) => quota_cpus(&cg, &mi, read),
        _ => None,
    };
    quota.map_or(cpus, |q| q.min(cpus)).max(1e-3)
}

/// The smallest CPU quota (in CPUs) of this process's cgroups, from `/proc/self/cgroup`,
/// `/proc/self/mountinfo` and the files `read` returns; None when no quota is set.
pub fn quota_cpus(
    cgroup: &str,
    mountinfo: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<f64> {
    let mounts = cgroup_mounts(mountinfo);
    let mut best: Option<f64> = None;
    let mut take = |q: f64| best = Some(best.map_or(q, |b: f64| b.min(q)));
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        for m in &mounts {
            let Some(dir) = m.dir_of(path) else { continue };
            if ctrls.is_empty() && m.v2 {
                if let Some(q) = read(&dir.join("cpu.max")).and_then(|s| parse_cpu_max(&s)) {
                    take(q);
                }
            } else if !m.v2 && ctrls.split(',').any(|c| c == "cpu") && m.cpu {
                let q =
                    read(&dir.join("cpu.cfs_quota_us")).and_then(|s| s.trim().parse::<i64>().ok());
                let p =
                    read(&dir.join("cpu.cfs_period_us")).and_then(|s| s.trim().parse::<i64>().ok());
                if let (Some(q), Some(p)) = (q, p)
                    && q > 0
                    && p > 0
                {
                    take(q as f64 / p as f64);
                }
            }
        }
    }
    best
}

/// `cpu.max`: "max PERIOD" (no quota) or "QUOTA PERIOD".
fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut f = s.split_whitespace();
    let (q, p) = (f.next()?, f.next()?);
    let (q, p) = (q.parse::<f64>().ok()?, p.parse::<f64>().ok()?);
    (q > 0.0 && p > 0.0).then_some(q / p)
}

/// A cgroup file system mounted here.
#[derive(Debug)]
struct Mount {
    /// The cgroup path the mount shows at its mount point.
    root: String,
    point: PathBuf,
    v2: bool,
    /// A v1 hierarchy with the `cpu` controller.
    cpu: bool,
}

impl Mount {
    /// The directory of cgroup `path` under this mount, when the mount shows it.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str())?
        };
        Some(self.point.join(rel.trim_start_matches('/')))
    }
}

fn cgroup_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let mut p = post.split(' ');
            let fs = p.next()?;
            let _src = p.next();
            let opts = p.next().unwrap_or("");
            let (v2, cpu) = match fs {
                "cgroup2" => (true, false),
                "cgroup" => (false, opts.split(',').any(|o| o == "cpu")),
                _ => return None,
            };
            Some(Mount {
                root: (*f.get(3)?).to_string(),
                point: PathBuf::from(*f.get(4)?),
                v2,
                cpu,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
32 25 0:28 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer\n\
33 25 0:29 / /proc rw - proc proc rw\n";

    fn files(v: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let m: HashMap<PathBuf, String> = v
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect();
        move |p: &Path| m.get(p).cloned()
    }

    #[test]
    fn a_v1_cfs_quota_is_read_from_the_cpu_hierarchy() {
        let cg = "5:freezer:/\n4:cpu,cpuacct:/spate-bench/n1\n0::/\n";
        let f = files(&[
            (
                "/sys/fs/cgroup/cpu,cpuacct/spate-bench/n1/cpu.cfs_quota_us",
                "1932\n",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct/spate-bench/n1/cpu.cfs_period_us",
                "20000\n",
            ),
            ("/sys/fs/cgroup/unified/cpu.max", "max 100000\n"),
        ]);
        assert_eq!(quota_cpus(cg, MOUNTS, f), Some(0.0966));
        // No quota (-1): none.
        let f = files(&[
            (
                "/sys/fs/cgroup/cpu,cpuacct/spate-bench/n1/cpu.cfs_quota_us",
                "-1\n",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct/spate-bench/n1/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        assert_eq!(quota_cpus(cg, MOUNTS, f), None);
    }

    #[test]
    fn a_v2_cpu_max_is_read_and_the_smallest_quota_wins() {
        let cg = "4:cpu,cpuacct:/a\n0::/jobs/p2\n";
        let f = files(&[
            ("/sys/fs/cgroup/unified/jobs/p2/cpu.max", "25000 100000\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us", "50000\n"),
            ("/sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_cpus(cg, MOUNTS, f), Some(0.25));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn a_mount_of_a_sub_tree_is_followed() {
        // Inside a container the hierarchy's mount shows a sub-tree at its mount point.
        let mi = "40 25 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let f = files(&[("/sys/fs/cgroup/cpu.max", "150000 100000\n")]);
        assert_eq!(quota_cpus("0::/docker/abc\n", mi, f), Some(1.5));
    }

    #[test]
    fn this_process_has_cpu_time_and_an_allowance() {
        let a = process_time().unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(process_time().unwrap() >= a);
        assert!(allowance() > 0.0);
    }
}
