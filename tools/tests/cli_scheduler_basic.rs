//! `spate scheduler`, `status`, `submit`, `cancel` as real processes.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use spate_netlib::auth::{Role, Secret};
use spate_netlib::msg::MsgConn;
use spate_netlib::proto::{
    ComputeCapacity, DataEndpoint, HostId, Message, NodeInfo, NodeRoles, RingBacking, StreamKey,
};

const BIN: &str = env!("CARGO_BIN_EXE_spate");
const WAIT: Duration = Duration::from_secs(30);

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spate(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("SPATE_SECRET")
        .env_remove("SPATE_SCHEDULER");
    c
}

fn run(args: &[&str]) -> Output {
    spate(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for a child with a deadline (kills it if late).
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

struct Sched {
    child: Child,
    sock: PathBuf,
    ep: String,
}

impl Drop for Sched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `spate scheduler` and waits until `spate status` answers.
fn start(dir: &Path) -> Sched {
    let sock = dir.join("sched.sock");
    let ep = format!("unix:{}", sock.display());
    let child = spate(&["scheduler", "--listen", &ep])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s = Sched { child, sock, ep };
    let deadline = Instant::now() + WAIT;
    loop {
        if s.sock.exists() {
            let out = run(&["status", "--json", "--scheduler", &s.ep]);
            if out.status.success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the scheduler never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

fn consumer_info(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        host: HostId(1),
        roles: NodeRoles {
            producer: false,
            consumer: true,
        },
        cores: 1,
        interfaces: vec![],
        compute: ComputeCapacity::default(),
        ring_budget: 1 << 30,
        data_endpoints: vec![DataEndpoint::Unix {
            path: "/tmp/c1.data".into(),
        }],
        handoff_socket: Some("/tmp/c1.handoff".into()),
        nic_bytes_per_sec: 0,
        ports: 0,
    }
}

/// A daemon joined to the scheduler, using the secret the scheduler generated.
fn join(s: &Sched, info: NodeInfo) -> MsgConn<UnixStream> {
    let secret = Secret::from_file(&PathBuf::from(format!("{}.secret", s.sock.display()))).unwrap();
    let mut c =
        MsgConn::client(UnixStream::connect(&s.sock).unwrap(), &secret, Role::Daemon).unwrap();
    c.send(&Message::Join(info)).unwrap();
    match c.recv().unwrap() {
        Message::Welcome { .. } => c,
        m => panic!("{m:?}"),
    }
}

const SPEC: &str = "kernel = \"pattern\"\nsize = \"64KiB\"\nline_bytes = \"1KiB\"\nnode = \"c1\"\n\
                    [params]\nseed = 5\n";

#[test]
fn scheduler_status_submit_cancel_and_clean_sigterm() {
    let dir = tmpdir("basic");
    let mut s = start(&dir);

    // A local scheduler without a secret generated one beside its socket, owner-only.
    let secret_file = dir.join("sched.sock.secret");
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = run(&["status", "--json", "--scheduler", &s.ep]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"jobs":[],"nodes":[]}"#);

    // An invalid spec: refused, the field named.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!("{SPEC}splt = 3\n").replace("[params]\nseed = 5\n", ""),
    )
    .unwrap();
    let out = run(&["submit", bad.to_str().unwrap(), "--scheduler", &s.ep]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("job refused: invalid job spec: splt: no such field"),
        "{err}"
    );

    // A valid spec with its consumer present but no producer.
    let mut c1 = join(&s, consumer_info("c1"));
    let good = dir.join("good.toml");
    std::fs::write(&good, SPEC).unwrap();
    let out = run(&[
        "submit",
        good.to_str().unwrap(),
        "--scheduler",
        &s.ep,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no producer is connected; start a producer daemon"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        r#"{"refused":{"message":"no producer is connected; start a producer daemon","reason":{"kind":"no_producers"}}}"#
    );

    // Status lists the consumer; cancelling an unknown job fails with the reason.
    let out = run(&["status", "--json", "--scheduler", &s.ep]);
    assert_eq!(
        text(&out.stdout).trim(),
        r#"{"jobs":[],"nodes":[{"consumer":true,"name":"c1","producer":false,"state":"alive","streams":0,"tasks_in_flight":0}]}"#
    );
    let out = run(&["cancel", "9", "--scheduler", &s.ep]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot cancel job 9: job 9 does not exist (or has ended)"),
        "{}",
        text(&out.stderr)
    );

    // SIGTERM: the daemon hears Shutdown, the scheduler exits 0 and removes its socket.
    sigterm(&s.child);
    let status = wait_exit(&mut s.child, "the scheduler");
    assert!(status.success(), "{status:?}");
    assert!(matches!(c1.recv().unwrap(), Message::Shutdown { .. }));
    assert!(!s.sock.exists(), "socket file left behind");
    let mut log = String::new();
    if let Some(e) = s.child.stderr.as_mut() {
        use std::io::Read;
        e.read_to_string(&mut log).unwrap();
    }
    assert!(log.contains("generated a cluster secret in"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn submit_wait_reports_a_scheduler_that_goes_away() {
    let dir = tmpdir("wait");
    let mut s = start(&dir);
    // A consumer that allocates, and a producer (the job never gets Ready, so it never runs).
    let mut c1 = join(&s, consumer_info("c1"));
    let mut pinfo = consumer_info("p1");
    pinfo.roles = NodeRoles {
        producer: true,
        consumer: false,
    };
    pinfo.data_endpoints.clear();
    let _p1 = join(&s, pinfo);
    let consumer = std::thread::spawn(move || {
        while let Ok(m) = c1.recv() {
            if let Message::AllocStream { job, stream, .. } = m {
                let _ = c1.send(&Message::Allocated {
                    job,
                    stream,
                    key: StreamKey(0xabc),
                    handoff: "/tmp/c1 handoff".into(),
                    backing: RingBacking::Plain,
                });
            }
        }
    });
    let good = dir.join("good.toml");
    std::fs::write(&good, SPEC).unwrap();
    let mut sub = spate(&[
        "submit",
        good.to_str().unwrap(),
        "--scheduler",
        &s.ep,
        "--wait",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "job 1 accepted: 1 stream");
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "  stream 0 (65536 bytes) on node c1: spate read --socket '/tmp/c1 handoff' \
         --key 00000000000000000000000000000abc --verify 5:0"
    );
    // Then the plan of the default policy, with its prediction.
    let plan = lines.next().unwrap().unwrap();
    assert!(plan.starts_with("  policy tclo: predicted "), "{plan}");
    // Wait until the submitter watches the job, then stop the scheduler.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run(&["status", "--json", "--scheduler", &s.ep]);
        if text(&out.stdout).contains("\"state\":\"waiting-ready\"") {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&s.child);
    let st = wait_exit(&mut sub, "spate submit --wait");
    assert_eq!(st.code(), Some(4));
    let mut err = String::new();
    if let Some(e) = sub.stderr.as_mut() {
        use std::io::Read;
        e.read_to_string(&mut err).unwrap();
    }
    assert!(
        err.contains("the scheduler is shutting down") || err.contains("the scheduler closed"),
        "{err}"
    );
    assert!(err.contains("the outcome of job 1 is unknown"), "{err}");
    assert!(wait_exit(&mut s.child, "the scheduler").success());
    consumer.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
