//! Operating the daemons, with the real binary in separate processes: `/metrics` on the
//! scheduler and a node (checked by `promtool check metrics` where it is installed), INFO
//! lifecycle logs with node names and without ANSI or stream keys, JSON logs, a clean SIGTERM
//! stop (exit 0, sockets removed), and the CLI conventions (exit codes, units, one error
//! message, completions, man pages).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spate");

/// Every line a child writes on one of its pipes, forwarded to a channel (the pipe is drained
/// so the child never blocks on it).
fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (at most 60 s) for a line containing `pat`; returns it and keeps all lines seen.
fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, pat: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(pat) {
                    return l;
                }
            }
            Err(_) => panic!(
                "no line with {pat:?} within 60 s; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn drain(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>) {
    while let Ok(l) = rx.try_recv() {
        seen.push(l);
    }
}

/// GET /metrics at `addr` (HOST:PORT): the body.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// `promtool check metrics` on a scrape, when promtool is installed (CI installs it).
fn promtool(body: &str, what: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!(
            "SKIP promtool check of the {what}: promtool not installed (apt-get install prometheus)"
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics failed on the {what}:\n{}{}\n{body}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The value of the sample `name{labels}` (labels in any order), or None.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, r)) => (n, r.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: Vec<&str> = rest.split(',').filter(|s| !s.is_empty()).collect();
        let all = labels
            .iter()
            .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()));
        (all && have.len() == labels.len()).then(|| value.parse().ok())?
    })
}

fn kill_term(c: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Waits at most 30 s for the child to exit; its exit code.
fn wait_exit(c: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spate(args: &[&str], sched: &str) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("SPATE_SCHEDULER", sched)
        .output()
        .unwrap()
}

#[test]
fn daemons_serve_metrics_log_lifecycle_and_stop_cleanly() {
    let dir = tmpdir("daemons");
    let sock = dir.join("sched.sock");
    let ep = format!("unix:{}", sock.display());
    let mut sched = Command::new(BIN)
        .args(["scheduler", "--listen", &ep, "--metrics", "127.0.0.1:0"])
        .env_remove("SPATE_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s_err = lines(sched.stderr.take().unwrap());
    let mut s_seen = Vec::new();
    let l = wait_line(&s_err, &mut s_seen, "metrics at http://");
    let s_addr = l
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string();

    let run = dir.join("n1");
    let mut node = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "node",
            "--name",
            "n1",
            "--producer",
            "--consumer",
        ])
        .args([
            "--scheduler",
            &ep,
            "--ring-budget",
            "64MiB",
            "--metrics",
            "127.0.0.1:0",
        ])
        .arg("--run-dir")
        .arg(&run)
        .env_remove("SPATE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let n_out = lines(node.stdout.take().unwrap());
    let n_err = lines(node.stderr.take().unwrap());
    let (mut n_seen, mut n_logs) = (Vec::new(), Vec::new());
    let l = wait_line(&n_out, &mut n_seen, "metrics: http://");
    let n_addr = l
        .split("http://")
        .nth(1)
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string();
    wait_line(&n_out, &mut n_seen, "joined the scheduler");
    wait_line(&s_err, &mut s_seen, "node joined");

    // One job of 8 MiB, read to the end.
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        "name = \"ops\"\nkernel = \"pattern\"\nsize = \"8MiB\"\nchunk = \"1MiB\"\nnode = \"n1\"\n\
         [params]\nseed = 3\n",
    )
    .unwrap();
    let mut submit = Command::new(BIN)
        .arg("submit")
        .arg(&spec)
        .args(["--ready", "--wait", "--json"])
        .env("SPATE_SCHEDULER", &ep)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sub_out = lines(submit.stdout.take().unwrap());
    let mut sub_seen = Vec::new();
    let accepted = wait_line(&sub_out, &mut sub_seen, "\"streams\"");
    let v: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    let key = v["streams"][0]["key"].as_str().unwrap().to_string();
    let o = Command::new(BIN)
        .args(["read", "--key", &key, "--verify", "3:0", "--socket"])
        .arg(run.join("handoff.sock"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(submit.wait().unwrap().code(), Some(0));
    wait_line(&s_err, &mut s_seen, "job ended");

    // The scheduler's metrics. Its gauges are refreshed on its ticks (every 100 ms), and a
    // job on one host can end sooner: wait for a refresh that saw the node.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = scrape(&s_addr);
        if sample(&body, "spate_scheduler_nodes", &[("role", "producer")]).is_some() {
            break body;
        }
        assert!(Instant::now() < deadline, "gauges never refreshed:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    promtool(&body, "scheduler's metrics");
    let m = |n: &str, l: &[(&str, &str)]| sample(&body, n, l);
    assert_eq!(
        m(
            "spate_scheduler_admissions_total",
            &[("outcome", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "spate_scheduler_jobs_ended_total",
            &[("outcome", "completed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m("spate_scheduler_delivered_bytes_total", &[]),
        Some(8388608.0)
    );
    assert_eq!(
        m("spate_scheduler_admission_latency_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        m("spate_scheduler_nodes", &[("role", "producer")]),
        Some(1.0),
        "{body}"
    );
    assert!(m("spate_scheduler_events_total", &[("kind", "TaskDone")]).unwrap() >= 8.0);
    // The node's: every byte went over the local (unix) path to n1.
    let body = scrape(&n_addr);
    promtool(&body, "node's metrics");
    let m = |n: &str, l: &[(&str, &str)]| sample(&body, n, l);
    let node_l = ("node", "n1");
    assert_eq!(
        m(
            "spate_producer_expelled_bytes_total",
            &[("path", "unix"), node_l]
        ),
        Some(8388608.0)
    );
    assert_eq!(
        m(
            "spate_link_sent_bytes_total",
            &[("path", "unix"), ("to", "n1"), node_l]
        ),
        Some(8388608.0)
    );
    assert_eq!(
        m(
            "spate_producer_tasks_total",
            &[("kind", "expel"), ("outcome", "done"), node_l]
        ),
        Some(8.0)
    );
    assert_eq!(
        m("spate_producer_computed_bytes_total", &[node_l]),
        Some(8388608.0)
    );

    // SIGTERM: the node leaves, removes its sockets, exits 0; then the scheduler.
    assert!(run.join("handoff.sock").exists() && run.join("data.sock").exists());
    kill_term(&node);
    assert_eq!(wait_exit(&mut node), Some(0));
    assert!(
        !run.join("handoff.sock").exists(),
        "hand-off socket left behind"
    );
    assert!(!run.join("data.sock").exists(), "data socket left behind");
    wait_line(&s_err, &mut s_seen, "node left");
    kill_term(&sched);
    assert_eq!(wait_exit(&mut sched), Some(0));
    assert!(!sock.exists(), "scheduler socket left behind");
    std::thread::sleep(Duration::from_millis(100));
    drain(&s_err, &mut s_seen);
    drain(&n_out, &mut n_seen);
    drain(&n_err, &mut n_logs);

    // Logs: INFO lifecycle lines with the node's name, no ANSI on a pipe, no stream key.
    let s_log = s_seen.join("\n");
    for want in [
        "node joined conn=1 node=n1",
        "job accepted job=1 streams=1 nodes=n1",
        "job started job=1 name=ops",
        "job ended: completed job=1 name=ops bytes=8388608",
        "node left: SIGTERM received conn=1 node=n1",
    ] {
        assert!(
            s_log.contains(want),
            "no {want:?} in the scheduler's log:\n{s_log}"
        );
    }
    let n_log = n_logs.join("\n");
    for (what, log) in [("scheduler", &s_log), ("node", &n_log)] {
        assert!(
            !log.contains('\x1b'),
            "ANSI escapes in the {what}'s log:\n{log}"
        );
        assert!(
            !log.contains(&key),
            "the stream key is in the {what}'s log:\n{log}"
        );
    }
    // The node logs JSON lines, with its name in the span.
    let json_lines: Vec<serde_json::Value> = n_logs
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        json_lines.iter().any(|v| v["level"] == "INFO"
            && v["fields"]["message"] == "joined the scheduler"
            && v["span"]["node"] == "n1"),
        "{n_log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_missing_scheduler_is_reported_as_such_with_its_exit_code() {
    let dir = tmpdir("nosched");
    let ep = format!("unix:{}", dir.join("sched.sock").display());
    for args in [
        vec!["status"],
        vec!["cancel", "3"],
        vec![
            "node",
            "--name",
            "x",
            "--consumer",
            "--run-dir",
            dir.to_str().unwrap(),
        ],
    ] {
        let o = spate(&args, &ep);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(7), "{args:?}: {e}");
        assert_eq!(
            e.trim_end(),
            format!(
                "spate: error: no scheduler at {ep}: the socket does not exist; start one with \
                 `spate scheduler`, or point --scheduler (or SPATE_SCHEDULER) at the one running"
            ),
            "{args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_conventions() {
    let none = "unix:/nonexistent/spate.sock";
    // Bad arguments: clap's 2, and the unit error lists what was meant.
    let o = spate(
        &["read", "--socket", "/x", "--key", "k", "--rate", "2.5G"],
        none,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "ambiguous unit \"G\": units are case-sensitive (b = bit, B = byte, k = 1000, Ki = \
             1024); write GB (bytes, 1000-based), GiB (bytes, 1024-based) or Gbit (bits)"
        ),
        "{}",
        stderr(&o)
    );
    // A cause is printed once.
    let o = spate(
        &[
            "node",
            "--config",
            "/nonexistent/node.toml",
            "--name",
            "x",
            "--consumer",
        ],
        none,
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    // The exit-code table is in --help.
    let o = spate(&["--help"], none);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Exit status (every command):"), "{out}");
    assert!(
        out.contains("  6  the scheduler refused the job (submit)"),
        "{out}"
    );
    // Completions and man pages.
    let o = spate(&["completions", "bash"], none);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("_spate()"));
    let o = spate(&["man"], none);
    assert_eq!(o.status.code(), Some(0));
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains(".TH spate 1"), "{page}");
    let dir = tmpdir("man");
    let o = Command::new(BIN)
        .arg("man")
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let read = std::fs::read_to_string(dir.join("spate-read.1")).unwrap();
    assert!(read.contains(".TH spate-read 1"), "{read}");
    assert!(Path::new(&dir.join("spate-node.1")).exists());
    let _ = std::fs::remove_dir_all(&dir);
}
