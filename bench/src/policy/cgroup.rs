//! CPU quotas for producer daemons: one cgroup per producer with the `cpu` controller, so that
//! producers on one machine compute at unequal, known rates (what a cluster of unequal hosts
//! would be).
//!
//! Both cgroup versions: v1 (`cpu.cfs_quota_us`, `cpu.cfs_period_us`, `cgroup.procs`, on the
//! hierarchy the `cpu` controller is mounted on, e.g. `/sys/fs/cgroup/cpu`) and v2 (`cpu.max`
//! = "QUOTA PERIOD" on a `cgroup2` mount whose `cgroup.controllers` lists `cpu`; the mount
//! root's `cgroup.subtree_control` gets `+cpu` when it lacks it). [`CpuController::detect`]
//! picks what is mounted, from `/proc/self/mountinfo`.
//!
//! Groups are named like the emulated cluster's namespaces (`spb<pid>c<n>-<node>`), so that
//! [`remove_stale`] can tell leftovers of dead runs. A [`CpuGroup`] removes its directory on
//! drop (once its processes are gone); [`remove_registered`] does it for every live group, for
//! the interrupt handler (after the children were stopped).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, anyhow, bail};

/// Start of every group name (as the namespaces of [`crate::cluster::emu`]).
const PREFIX: &str = "spb";
/// The kernel's smallest CFS quota (µs), both versions.
pub const MIN_QUOTA_US: u64 = 1000;
/// The kernel's largest CFS period (µs).
pub const MAX_PERIOD_US: u64 = 1_000_000;

/// Directories of live groups (for the interrupt clean-up).
static GROUPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn groups() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which cgroup interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// cgroup v1: `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
    V1,
    /// cgroup v2: `cpu.max`.
    V2,
}

/// The mounted `cpu` controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuController {
    /// The interface.
    pub version: Version,
    /// Where its hierarchy is mounted (groups are made right below).
    pub root: PathBuf,
}

/// A CPU limit: `quota_us` of CPU time per `period_us` (all threads of the group together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limit {
    /// CPU time per period, µs.
    pub quota_us: u64,
    /// The period, µs.
    pub period_us: u64,
}

impl Limit {
    /// The share of one CPU this limit gives.
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }
}

/// The limit that gives `cpus` of one CPU (0.05 = 5 %), with the period `base_period_us` where
/// the quota stays at or above the kernel's 1 ms, else the shortest period that keeps it there
/// (at most 1 s). A short period keeps a throttled group's pauses short (they delay chunks).
pub fn limit_for(cpus: f64, base_period_us: u64) -> Result<Limit> {
    if !(cpus.is_finite() && cpus > 0.0) {
        bail!("a CPU share must be more than 0 (got {cpus})");
    }
    let base = base_period_us.clamp(MIN_QUOTA_US, MAX_PERIOD_US);
    let needed = (MIN_QUOTA_US as f64 / cpus).ceil() as u64;
    let period_us = base.max(needed);
    if period_us > MAX_PERIOD_US {
        bail!("a CPU share of {cpus} is below what a cgroup can give (1 ms per 1 s period: 0.001)");
    }
    let quota_us = ((cpus * period_us as f64).round() as u64).max(MIN_QUOTA_US);
    Ok(Limit {
        quota_us,
        period_us,
    })
}

/// The `cpu` controller in a `/proc/self/mountinfo` text: a v1 `cgroup` mount whose super
/// options list `cpu`, else a `cgroup2` mount for which `has_cpu(mount point)` holds (its
/// `cgroup.controllers` lists `cpu`).
pub fn find_in_mountinfo(text: &str, has_cpu: impl Fn(&Path) -> bool) -> Option<CpuController> {
    let mut v2 = None;
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = head.split_whitespace().nth(4) else {
            continue;
        };
        let mut t = tail.split_whitespace();
        let (Some(fstype), _, Some(sup)) = (t.next(), t.next(), t.next()) else {
            continue;
        };
        let mp = PathBuf::from(unescape_mount(mount_point));
        match fstype {
            "cgroup" if sup.split(',').any(|o| o == "cpu") => {
                return Some(CpuController {
                    version: Version::V1,
                    root: mp,
                });
            }
            "cgroup2" if v2.is_none() && has_cpu(&mp) => {
                v2 = Some(CpuController {
                    version: Version::V2,
                    root: mp,
                });
            }
            _ => {}
        }
    }
    v2
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn v2_has_cpu(mp: &Path) -> bool {
    std::fs::read_to_string(mp.join("cgroup.controllers"))
        .is_ok_and(|s| s.split_whitespace().any(|c| c == "cpu"))
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

impl CpuController {
    /// The `cpu` controller mounted here, or why there is none (not root, not mounted).
    pub fn detect() -> std::result::Result<CpuController, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("CPU quotas need root (cgroups)".into());
        }
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        find_in_mountinfo(&text, v2_has_cpu).ok_or_else(|| {
            "no cgroup `cpu` controller is mounted (cgroup v1: mount -t cgroup -o cpu cgroup \
             /sys/fs/cgroup/cpu; v2: a cgroup2 mount whose cgroup.controllers lists cpu)"
                .to_string()
        })
    }

    /// A new group for `node` with no limit yet.
    pub fn create(&self, node: &str) -> Result<CpuGroup> {
        if self.version == Version::V2 {
            let ctl = self.root.join("cgroup.subtree_control");
            let on = std::fs::read_to_string(&ctl)
                .with_context(|| format!("reading {}", ctl.display()))?;
            if !on.split_whitespace().any(|c| c == "cpu") {
                write(&ctl, "+cpu")?;
            }
        }
        let name = format!(
            "{PREFIX}{}c{}-{node}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.root.join(&name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating the cgroup {}", path.display()))?;
        groups().push(path.clone());
        Ok(CpuGroup {
            version: self.version,
            path,
            limit: None,
        })
    }
}

/// One cgroup with the `cpu` controller; removed on drop.
#[derive(Debug)]
pub struct CpuGroup {
    version: Version,
    path: PathBuf,
    limit: Option<Limit>,
}

impl CpuGroup {
    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limit last set.
    pub fn limit(&self) -> Option<Limit> {
        self.limit
    }

    /// Limits the group to `limit` (read back to check the kernel took it).
    pub fn set(&mut self, limit: Limit) -> Result<()> {
        match self.version {
            Version::V1 => {
                // No quota first: a period below the current quota is then always accepted.
                write(&self.path.join("cpu.cfs_quota_us"), "-1")?;
                write(
                    &self.path.join("cpu.cfs_period_us"),
                    &limit.period_us.to_string(),
                )?;
                write(
                    &self.path.join("cpu.cfs_quota_us"),
                    &limit.quota_us.to_string(),
                )?;
            }
            Version::V2 => write(
                &self.path.join("cpu.max"),
                &format!("{} {}", limit.quota_us, limit.period_us),
            )?,
        }
        let got = self.read_limit()?;
        if got != Some(limit) {
            bail!(
                "{}: asked for {limit:?}, the kernel shows {got:?}",
                self.path.display()
            );
        }
        self.limit = Some(limit);
        Ok(())
    }

    /// The limit the kernel shows (None: unlimited).
    pub fn read_limit(&self) -> Result<Option<Limit>> {
        let read = |f: &str| {
            std::fs::read_to_string(self.path.join(f))
                .with_context(|| format!("reading {}", self.path.join(f).display()))
        };
        let (quota, period) = match self.version {
            Version::V1 => (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?),
            Version::V2 => {
                let s = read("cpu.max")?;
                let mut it = s.split_whitespace();
                let q = it.next().unwrap_or("").to_string();
                (q, it.next().unwrap_or("").to_string())
            }
        };
        let (quota, period) = (quota.trim(), period.trim());
        if quota == "-1" || quota == "max" {
            return Ok(None);
        }
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| anyhow!("{}: unreadable limit {s:?}", self.path.display()))
        };
        Ok(Some(Limit {
            quota_us: parse(quota)?,
            period_us: parse(period)?,
        }))
    }

    /// Moves process `pid` (all its threads) into the group; its later threads and children
    /// stay in it.
    pub fn add(&self, pid: u32) -> Result<()> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())?;
        if !self.pids()?.contains(&pid) {
            bail!(
                "process {pid} is not in {} after moving it",
                self.path.display()
            );
        }
        Ok(())
    }

    /// The processes in the group.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let p = self.path.join("cgroup.procs");
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// `(periods, throttled periods)` so far, from `cpu.stat` (both versions name them so).
    pub fn throttling(&self) -> Option<(u64, u64)> {
        let s = std::fs::read_to_string(self.path.join("cpu.stat")).ok()?;
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        Some((get("nr_periods ")?, get("nr_throttled ")?))
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        if let Err(e) = remove_dir(&self.path) {
            eprintln!("spate bench: {e:#}");
        }
        groups().retain(|p| p != &self.path);
    }
}

/// Removes a group directory; its processes must have exited (a few ms after they were
/// reaped, the kernel may still count them: retried for up to 2 s).
fn remove_dir(path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                if std::time::Instant::now() > deadline {
                    return Err(e).with_context(|| {
                        format!(
                            "removing the cgroup {} (processes left in it)",
                            path.display()
                        )
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

/// Removes every live group's directory (their processes must have been stopped); returns how
/// many it removed. For the interrupt handler.
pub fn remove_registered() -> usize {
    let paths = std::mem::take(&mut *groups());
    let mut n = 0;
    for p in paths {
        match remove_dir(&p) {
            Ok(()) => n += 1,
            Err(e) => eprintln!("spate bench: {e:#}"),
        }
    }
    n
}

/// The pid in a group name made here (`spb<pid>c...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    if end == 0 || rest.as_bytes()[end] != b'c' {
        return None;
    }
    rest[..end].parse().ok()
}

/// Removes groups of earlier runs whose process is gone (and that no process is left in);
/// returns their names.
pub fn remove_stale(ctl: &CpuController) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries =
        std::fs::read_dir(&ctl.root).with_context(|| format!("listing {}", ctl.root.display()))?;
    for e in entries.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if let Some(pid) = owner_pid(&name)
            && !Path::new("/proc").join(pid.to_string()).exists()
            && e.path().is_dir()
        {
            remove_dir(&e.path())?;
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_keep_the_quota_above_a_millisecond() {
        assert_eq!(
            limit_for(0.06, 20_000).unwrap(),
            Limit {
                quota_us: 1200,
                period_us: 20_000
            }
        );
        // A tenth of that: the period grows so that the quota stays at 1 ms.
        assert_eq!(
            limit_for(0.006, 20_000).unwrap(),
            Limit {
                quota_us: 1000,
                period_us: 166_667
            }
        );
        assert_eq!(
            limit_for(1.5, 100_000).unwrap(),
            Limit {
                quota_us: 150_000,
                period_us: 100_000
            }
        );
        assert!((limit_for(0.006, 20_000).unwrap().cpus() - 0.006).abs() < 1e-5);
        assert!(limit_for(0.0005, 20_000).is_err());
        assert!(limit_for(0.0, 20_000).is_err());
        assert!(limit_for(f64::NAN, 20_000).is_err());
    }

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_finds_v1_cpu_not_cpuacct_or_cpuset() {
        let c = find_in_mountinfo(MOUNTINFO_V1, |_| true).unwrap();
        assert_eq!(c.version, Version::V1);
        assert_eq!(c.root, Path::new("/sys/fs/cgroup/cpu"));
        // A combined hierarchy, with optional fields before the separator.
        let combined = "40 31 0:37 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:16 - cgroup \
                        cgroup rw,cpu,cpuacct\n";
        let c = find_in_mountinfo(combined, |_| false).unwrap();
        assert_eq!(c.root, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn mountinfo_finds_v2_when_its_controllers_list_cpu() {
        let v2 = "\
30 23 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
";
        let c = find_in_mountinfo(v2, |p| p == Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(c.version, Version::V2);
        assert_eq!(c.root, Path::new("/sys/fs/cgroup"));
        assert!(find_in_mountinfo(v2, |_| false).is_none());
        // This machine kind: cpu is bound to v1, the v2 mount has only hugetlb.
        let only_v2_hugetlb = MOUNTINFO_V1.replace("rw,cpu\n", "rw,blkio\n");
        assert!(find_in_mountinfo(&only_v2_hugetlb, |_| false).is_none());
        // An escaped space in a mount point.
        let esc = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        let c = find_in_mountinfo(esc, |_| true).unwrap();
        assert_eq!(c.root, Path::new("/mnt/cg two"));
    }

    #[test]
    fn names_carry_their_owner_pid() {
        assert_eq!(owner_pid("spb1234c0-n1"), Some(1234));
        assert_eq!(owner_pid("spb1234-n1"), None);
        assert_eq!(owner_pid("spbc0-n1"), None);
        assert_eq!(owner_pid("user.slice"), None);
    }

    /// A busy process in a group with 5 % of a CPU gets about that, and everything is removed.
    #[test]
    fn a_quota_throttles_a_busy_process_and_the_group_goes_away() {
        let ctl = match CpuController::detect() {
            Ok(c) => c,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        };
        let mut g = ctl.create("test").unwrap();
        let path = g.path().to_path_buf();
        assert!(groups().contains(&path));
        let limit = limit_for(0.05, 20_000).unwrap();
        g.set(limit).unwrap();
        assert_eq!(g.read_limit().unwrap(), Some(limit));
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        g.add(child.id()).unwrap();
        assert_eq!(g.pids().unwrap(), vec![child.id()]);
        // Throttled in most periods once it has run a few of them (a condition, not a sleep:
        // the kernel counts periods as the busy loop runs).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let (periods, throttled) = loop {
            let (p, t) = g.throttling().unwrap();
            if p >= 20 || std::time::Instant::now() > deadline {
                break (p, t);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(periods >= 20, "{periods} periods");
        assert!(
            throttled * 2 > periods,
            "{throttled} of {periods} throttled"
        );
        drop(g);
        assert!(!path.exists(), "{} left behind", path.display());
        assert!(!groups().contains(&path));
    }
}
