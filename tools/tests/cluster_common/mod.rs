//! Shared harness for the multi-process cluster tests: a scheduler and node daemons, each its
//! own `spate` process, in a temporary run directory with a cluster secret file; `spate submit`,
//! `spate status` and `spate read` run as the user would run them. Every child is killed and
//! reaped when the [`Cluster`] is dropped, so a failing test leaves nothing behind.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod netns;

/// The `spate` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_spate");
/// Deadline for anything that should happen "soon" on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// A `spate` command with no cluster settings inherited from the environment.
pub fn spate() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("SPATE_SECRET")
        .env_remove("SPATE_SCHEDULER")
        .env_remove("SPATE_SOCKET")
        .env_remove("SPATE_LOG");
    c
}

/// Output text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh, empty directory named after the test and this process.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-cl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a 32-byte hex cluster secret with mode 0600.
pub fn write_secret(path: &Path) {
    let mut s = String::new();
    for i in 0..32u32 {
        s.push_str(&format!("{:02x}", (i * 37 + std::process::id()) % 251));
    }
    std::fs::write(path, s).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Waits for `child` to exit within `limit`; kills it and panics when late.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGKILL to a child and reaps it.
pub fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A command for the `spate` binary under `wrap` (e.g. `ip netns exec NS`; empty: none), with
/// no cluster settings inherited from the environment.
pub fn cmd_in(wrap: &[String]) -> Command {
    let mut c = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    c.env_remove("SPATE_SECRET")
        .env_remove("SPATE_SCHEDULER")
        .env_remove("SPATE_SOCKET")
        .env_remove("SPATE_LOG");
    c
}

/// One daemon of the cluster; its output goes to `DIR/NAME.log`.
pub struct Daemon {
    /// Its name (`scheduler`, or the node name).
    pub name: String,
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
}

/// A local cluster: a scheduler listening on a UNIX socket plus node daemons.
pub struct Cluster {
    /// The run directory (sockets, logs, specs).
    pub dir: PathBuf,
    /// The cluster secret file every process uses.
    pub secret: PathBuf,
    /// The scheduler endpoint users and nodes connect to (`unix:...`).
    pub sched_ep: String,
    /// Scheduler first, then nodes in start order.
    pub daemons: Vec<Daemon>,
    /// Other children (readers, submits) killed on drop.
    pub others: Vec<Child>,
    /// Prefix for every spawned command (e.g. `ip netns exec NS`); empty for local.
    pub wrap: Vec<String>,
    /// The scheduler's arguments (to start it again).
    pub sched_args: Vec<String>,
}

impl Cluster {
    /// Starts a scheduler listening on `unix:DIR/sched.sock` (plus `extra_listen`, run under
    /// `wrap`), and waits until `spate status` answers.
    pub fn start_with(tag: &str, wrap: Vec<String>, extra_listen: &[String]) -> Cluster {
        Cluster::start_full(tag, wrap, extra_listen, &[])
    }

    /// [`Cluster::start`] with more `spate scheduler` arguments.
    pub fn start_args(tag: &str, sched_args: &[&str]) -> Cluster {
        Cluster::start_full(tag, vec![], &[], sched_args)
    }

    /// A scheduler with `extra_listen` listeners and `sched_args` (see [`Cluster::start_with`]).
    pub fn start_full(
        tag: &str,
        wrap: Vec<String>,
        extra_listen: &[String],
        sched_args: &[&str],
    ) -> Cluster {
        let dir = tmpdir(tag);
        let secret = dir.join("secret");
        write_secret(&secret);
        let sched_ep = format!("unix:{}", dir.join("sched.sock").display());
        let mut c = Cluster {
            dir,
            secret,
            sched_ep: sched_ep.clone(),
            daemons: vec![],
            others: vec![],
            wrap,
            sched_args: vec![],
        };
        let mut args = vec!["scheduler".to_string(), "--listen".into(), sched_ep];
        for l in extra_listen {
            args.push("--listen".into());
            args.push(l.clone());
        }
        let s = c.secret_arg();
        args.extend(s);
        args.extend(sched_args.iter().map(|a| a.to_string()));
        c.sched_args = args.clone();
        c.spawn_daemon("scheduler", &args);
        c.wait_scheduler();
        c
    }

    fn wait_scheduler(&mut self) {
        let deadline = Instant::now() + WAIT;
        while self.status_json().is_none() {
            self.check_alive();
            assert!(Instant::now() < deadline, "the scheduler never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the scheduler and starts it again with the same arguments (same socket, same
    /// state directory); returns once it answers.
    pub fn restart_scheduler(&mut self) {
        self.kill("scheduler");
        let args = self.sched_args.clone();
        self.daemons.retain(|d| d.name != "scheduler");
        self.spawn_daemon("scheduler", &args);
        self.wait_scheduler();
    }

    /// [`Cluster::start_with`] with no wrapper and no extra listener.
    pub fn start(tag: &str) -> Cluster {
        Cluster::start_with(tag, vec![], &[])
    }

    fn secret_arg(&self) -> Vec<String> {
        vec!["--secret-file".into(), self.secret.display().to_string()]
    }

    /// A command for the `spate` binary, under the wrapper when one is set.
    pub fn cmd(&self) -> Command {
        cmd_in(&self.wrap)
    }

    /// Spawns a daemon under the cluster's wrapper with its output in `DIR/NAME.log`.
    pub fn spawn_daemon(&mut self, name: &str, args: &[String]) {
        let mut cmd = self.cmd();
        self.spawn_daemon_cmd(name, &mut cmd, args);
    }

    /// Spawns `cmd args` as a daemon with its output in `DIR/NAME.log`.
    pub fn spawn_daemon_cmd(&mut self, name: &str, cmd: &mut Command, args: &[String]) {
        let log = self.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        self.daemons.push(Daemon {
            name: name.into(),
            child,
            log,
        });
    }

    /// The arguments of `spate node` for node `name` with `role` (`--producer`/`--consumer`)
    /// connecting to `sched` (default: the UNIX endpoint), plus `extra`.
    pub fn node_args(
        &self,
        name: &str,
        role: &str,
        sched: Option<&str>,
        extra: &[&str],
    ) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "node".into(),
            "--name".into(),
            name.into(),
            role.into(),
            "--scheduler".into(),
            sched.unwrap_or(&self.sched_ep).into(),
            "--run-dir".into(),
            self.dir.join(name).display().to_string(),
            "--ring-budget".into(),
            "256MiB".into(),
        ];
        a.extend(self.secret_arg());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Starts a node daemon.
    pub fn node(&mut self, name: &str, role: &str) {
        let args = self.node_args(name, role, None, &[]);
        self.spawn_daemon(name, &args);
    }

    /// Panics with the log of any daemon that exited.
    pub fn check_alive(&mut self) {
        for d in &mut self.daemons {
            if let Some(st) = d.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                panic!("{} exited ({st}):\n{log}", d.name);
            }
        }
    }

    /// The daemon called `name`.
    pub fn daemon(&mut self, name: &str) -> &mut Daemon {
        self.daemons
            .iter_mut()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no daemon {name}"))
    }

    /// SIGKILLs daemon `name` and reaps it.
    pub fn kill(&mut self, name: &str) {
        sigkill(&mut self.daemon(name).child);
    }

    /// `spate status --json`, parsed; `None` when the scheduler does not answer.
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let out = spate()
            .args(["status", "--json", "--scheduler", &self.sched_ep])
            .args(self.secret_arg())
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until `names` are all connected and alive.
    pub fn wait_nodes(&mut self, names: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.check_alive();
            if let Some(s) = self.status_json() {
                let alive: Vec<&str> = s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["state"] == "alive")
                    .filter_map(|n| n["name"].as_str())
                    .collect();
                if names.iter().all(|n| alive.contains(n)) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nodes {names:?} did not all join"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `spate status --json` until `cond` holds for it (panics after [`WAIT`]).
    pub fn wait_status(
        &mut self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.status_json()
                && cond(&s)
            {
                return s;
            }
            assert!(Instant::now() < deadline, "status never showed: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `spec` to `DIR/NAME.toml` and returns its path.
    pub fn spec(&self, name: &str, spec: &str) -> PathBuf {
        let p = self.dir.join(format!("{name}.toml"));
        std::fs::write(&p, spec).unwrap();
        p
    }

    /// `spate submit SPEC --ready --wait --json`, running; its first JSON line (acceptance)
    /// parsed. Panics with the output when the job was refused.
    pub fn submit_wait(&mut self, spec: &Path) -> Submission {
        let mut child = spate()
            .arg("submit")
            .arg(spec)
            .args(["--ready", "--wait", "--json", "--scheduler", &self.sched_ep])
            .args(self.secret_arg())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let accepted: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("submit said {line:?}\n{err}");
            }
        };
        assert!(accepted.get("job").is_some(), "not accepted: {line}");
        Submission {
            child,
            out,
            accepted,
        }
    }

    /// `spate submit SPEC` to its end (no --ready): its output.
    pub fn submit_output(&self, spec: &Path) -> Output {
        spate()
            .arg("submit")
            .arg(spec)
            .args(["--scheduler", &self.sched_ep])
            .args(self.secret_arg())
            .output()
            .unwrap()
    }

    /// Starts `spate read --json` on stream `s` of an accepted job (the key and socket from
    /// the acceptance), with `--verify SEED:STREAM` and `extra` arguments.
    pub fn read(&self, s: &serde_json::Value, seed: u64, extra: &[&str]) -> Child {
        self.read_in(&self.wrap, s, seed, extra)
    }

    /// [`Cluster::read`] under `wrap` instead of the cluster's wrapper (e.g. in the namespace
    /// of the stream's consumer).
    pub fn read_in(
        &self,
        wrap: &[String],
        s: &serde_json::Value,
        seed: u64,
        extra: &[&str],
    ) -> Child {
        let stream = s["stream"].as_u64().unwrap();
        cmd_in(wrap)
            .arg("read")
            .arg("--socket")
            .arg(s["handoff"].as_str().unwrap())
            .args(["--key", s["key"].as_str().unwrap(), "--json"])
            .args(["--verify", &format!("{seed}:{stream}")])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.daemons.iter_mut().rev() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        if std::thread::panicking() {
            for d in &self.daemons {
                let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                eprintln!("---- log of {} ----\n{log}", d.name);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `spate submit --ready --wait --json`.
pub struct Submission {
    /// The process.
    pub child: Child,
    out: BufReader<ChildStdout>,
    /// Its acceptance line: `{"job", "streams": [{"stream", "node", "handoff", "key", ...}]}`.
    pub accepted: serde_json::Value,
}

impl Submission {
    /// The accepted streams.
    pub fn streams(&self) -> Vec<serde_json::Value> {
        self.accepted["streams"].as_array().unwrap().clone()
    }

    /// The job id.
    pub fn job(&self) -> u64 {
        self.accepted["job"].as_u64().unwrap()
    }

    /// Waits for the end: exit code, the outcome JSON line, stderr.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, serde_json::Value, String) {
        let st = wait_exit(&mut self.child, limit, "spate submit --wait");
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let last = rest.lines().last().unwrap_or("null");
        let v = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("bad outcome line {last:?}: {e}\n{err}"));
        (st.code(), v, err)
    }
}

/// Waits for a reader to exit: exit code and its JSON report.
pub fn finish_read(mut c: Child, limit: Duration) -> (Option<i32>, serde_json::Value) {
    let st = wait_exit(&mut c, limit, "spate read");
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let v = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("bad read report {out:?}: {e}\n{err}"));
    (st.code(), v)
}

/// Asserts a reader read its whole stream of `len` bytes and verified it.
pub fn assert_verified(code: Option<i32>, rep: &serde_json::Value, len: u64) {
    assert_eq!(code, Some(0), "spate read failed: {rep}");
    assert_eq!(rep["outcome"], "end", "{rep}");
    assert_eq!(rep["bytes"].as_u64(), Some(len), "{rep}");
    assert_eq!(rep["verified"], true, "{rep}");
}
