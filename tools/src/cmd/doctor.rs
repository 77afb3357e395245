//! `spate doctor`: what this node offers spate (kernel, io_uring and the opcodes spate needs,
//! hugepages, memlock, congestion controls, cores). Exits non-zero, naming the fix, when
//! something spate needs is missing.

use serde::Serialize;
use spate_runtime::{memlock, probe};

/// Arguments of `spate doctor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Memory spate will register with io_uring on this node (buffers + stream rings), e.g.
    /// 1GiB; the memlock check uses it.
    #[arg(long, default_value = "256MiB", value_parser = spate_bench::parse_size)]
    pub register: u64,
}

#[derive(Serialize, Debug)]
struct Check {
    name: &'static str,
    status: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Serialize, Debug)]
struct Report {
    kernel: String,
    io_uring: Option<IoUring>,
    hugepages_total: u64,
    hugepages_free: u64,
    thp_shmem: String,
    memlock_soft: Option<u64>,
    memlock_hard: Option<u64>,
    cap_ipc_lock: bool,
    congestion_available: Vec<String>,
    cores: Vec<usize>,
    checks: Vec<Check>,
    ok: bool,
}

#[derive(Serialize, Debug)]
struct IoUring {
    opcodes: Vec<(String, bool)>,
    defer_taskrun: bool,
    coop_taskrun: bool,
}

const OK: &str = "ok";
const WARN: &str = "warn";
const FAIL: &str = "FAIL";

fn check(name: &'static str, status: &'static str, detail: String, fix: Option<String>) -> Check {
    Check {
        name,
        status,
        detail,
        fix,
    }
}

fn gather(register: u64) -> Report {
    let mut checks = Vec::new();
    let kernel = probe::kernel_release();

    let io_uring = match probe::probe() {
        Ok(f) => {
            let missing = f.missing();
            if missing.is_empty() {
                checks.push(check(
                    "io_uring",
                    OK,
                    format!(
                        "all {} required opcodes; SINGLE_ISSUER+DEFER_TASKRUN {}",
                        probe::REQUIRED.len(),
                        if f.defer_taskrun {
                            "yes"
                        } else {
                            "no (falls back)"
                        }
                    ),
                    None,
                ));
            } else {
                checks.push(check(
                    "io_uring",
                    FAIL,
                    format!("missing opcodes: {}", missing.join(", ")),
                    Some("upgrade to Linux >= 6.1".into()),
                ));
            }
            Some(IoUring {
                opcodes: f
                    .opcodes
                    .iter()
                    .map(|(n, ok)| (n.to_string(), *ok))
                    .collect(),
                defer_taskrun: f.defer_taskrun,
                coop_taskrun: f.coop_taskrun,
            })
        }
        Err(e) => {
            checks.push(check(
                "io_uring",
                FAIL,
                e.to_string(),
                Some("set `sysctl kernel.io_uring_disabled=0` and allow io_uring_setup in any seccomp profile".into()),
            ));
            None
        }
    };

    let (total, free) = spate_ring::shm::huge_pool();
    if total == 0 {
        checks.push(check(
            "hugepages",
            WARN,
            "no 2 MiB hugepages reserved: buffers fall back to plain shared memory".into(),
            Some("reserve some: `echo 1024 > /proc/sys/vm/nr_hugepages` (2 GiB) or vm.nr_hugepages in sysctl.conf".into()),
        ));
    } else {
        checks.push(check(
            "hugepages",
            OK,
            format!("{total} reserved, {free} free (2 MiB each)"),
            None,
        ));
    }
    let thp_shmem = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());

    let cap = memlock::has_cap_ipc_lock();
    let (soft, hard) = match memlock::limits() {
        Ok(l) => {
            match memlock::plan(l, register, cap) {
                Ok(p) => checks.push(check(
                    "memlock",
                    OK,
                    match p {
                        memlock::Plan::Privileged => {
                            "CAP_IPC_LOCK: registered memory is not limited".into()
                        }
                        memlock::Plan::Enough => format!(
                            "soft limit {} covers {}",
                            memlock::fmt_limit(l.soft),
                            memlock::fmt_bytes(register)
                        ),
                        memlock::Plan::RaiseTo(to) => format!(
                            "soft limit {} is raised at start to the hard limit {}",
                            memlock::fmt_limit(l.soft),
                            memlock::fmt_limit(to)
                        ),
                    },
                    None,
                )),
                Err(e) => checks.push(check(
                    "memlock",
                    FAIL,
                    e.to_string(),
                    Some("`ulimit -l unlimited`, LimitMEMLOCK=infinity, or CAP_IPC_LOCK".into()),
                )),
            }
            (Some(l.soft), Some(l.hard))
        }
        Err(e) => {
            checks.push(check("memlock", FAIL, e.to_string(), None));
            (None, None)
        }
    };

    let congestion_available = spate_netlib::sockopt::available_congestion();
    if congestion_available.iter().any(|c| c == "reno") {
        checks.push(check(
            "congestion",
            OK,
            format!("reno available ({})", congestion_available.join(" ")),
            None,
        ));
    } else {
        checks.push(check(
            "congestion",
            WARN,
            format!(
                "reno not available ({}): TCP connections keep the system default",
                congestion_available.join(" ")
            ),
            Some("`modprobe tcp_reno` or configure another algorithm".into()),
        ));
    }

    let cores = spate_runtime::thread::available_cores();
    checks.push(check(
        "cores",
        if cores.is_empty() { FAIL } else { OK },
        format!("{} usable: {:?}", cores.len(), cores),
        None,
    ));

    let ok = checks.iter().all(|c| c.status != FAIL);
    Report {
        kernel,
        io_uring,
        hugepages_total: total,
        hugepages_free: free,
        thp_shmem,
        memlock_soft: soft,
        memlock_hard: hard,
        cap_ipc_lock: cap,
        congestion_available,
        cores,
        checks,
        ok,
    }
}

/// Run `spate doctor`.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let r = gather(a.register);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("spate doctor: kernel {}", r.kernel);
        if let Some(u) = &r.io_uring {
            let optional = |n: &str| spate_runtime::probe::OPTIONAL.iter().any(|(o, _)| *o == n);
            let show = |want_optional: bool| -> Vec<String> {
                u.opcodes
                    .iter()
                    .filter(|(n, _)| optional(n) == want_optional)
                    .map(|(n, ok)| format!("{n}{}", if *ok { "" } else { "(missing)" }))
                    .collect()
            };
            let (req, opt) = (show(false), show(true));
            println!(
                "  io_uring opcodes: {} required: {}; {} optional: {}",
                req.len(),
                req.join(" "),
                opt.len(),
                opt.join(" ")
            );
        }
        println!(
            "  hugepages: {} reserved, {} free; THP for shmem: {}",
            r.hugepages_total, r.hugepages_free, r.thp_shmem
        );
        println!(
            "  memlock: soft {}, hard {}; CAP_IPC_LOCK: {}",
            r.memlock_soft.map_or("?".into(), memlock::fmt_limit),
            r.memlock_hard.map_or("?".into(), memlock::fmt_limit),
            if r.cap_ipc_lock { "yes" } else { "no" }
        );
        println!(
            "  congestion controls: {}",
            r.congestion_available.join(" ")
        );
        println!("  cores: {:?}", r.cores);
        for c in &r.checks {
            println!("  [{:4}] {}: {}", c.status, c.name, c.detail);
            if let Some(f) = &c.fix {
                println!("         fix: {f}");
            }
        }
        println!(
            "{}",
            if r.ok {
                "spate can run here."
            } else {
                "spate cannot run here: see FAIL above."
            }
        );
    }
    Ok(if r.ok { 0 } else { 1 })
}
