//! `spate read` end to end against `spate ring-serve` (the real binary, two processes).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_spate");

fn sock(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("spate-read-{}-{name}.sock", std::process::id()))
}

/// Start `spate ring-serve` and wait for its READY line.
#[allow(clippy::zombie_processes)] // the caller waits for (or kills and waits) the child
fn serve(name: &str, extra: &[&str]) -> (Child, PathBuf) {
    let path = sock(name);
    let mut c = Command::new(BIN)
        .args(["ring-serve", "--no-hugetlb", "--socket"])
        .arg(&path)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("READY"), "ring-serve said {line:?}");
    (c, path)
}

fn read(path: &PathBuf, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["read", "--key", "s", "--socket"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

const BYTES: u64 = 5 * 1024 * 1024 + 4321;

#[test]
fn reads_verified_stream_to_file_byte_exact() {
    let (mut srv, path) = serve(
        "file",
        &[
            "--bytes",
            &BYTES.to_string(),
            "--seed",
            "7",
            "--stream",
            "2",
            "--chunk",
            "100000",
        ],
    );
    let out = std::env::temp_dir().join(format!("spate-read-{}.out", std::process::id()));
    let o = read(
        &path,
        &["--verify", "7:2", "--hash", "--out", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&format!("{BYTES} bytes")), "{text}");
    assert!(text.contains("pattern verified"), "{text}");
    let got = std::fs::read(&out).unwrap();
    let mut want = vec![0u8; BYTES as usize];
    spate_ring::pattern::fill(7, 2, 0, &mut want);
    assert!(got == want, "file differs from the pattern");
    let digest = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&want));
    assert!(text.contains(&format!("xxh3-128 {digest}")), "{text}");
    std::fs::remove_file(&out).unwrap();
    assert!(srv.wait().unwrap().success());
    assert!(!path.exists());
}

#[test]
fn json_report_shape_with_constant_rate() {
    let (mut srv, path) = serve("json", &["--bytes", "2000000", "--chunk", "65536"]);
    let o = read(
        &path,
        &[
            "--json", "--verify", "0:0", "--rate", "400Mbit", "--block", "64KiB",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    assert_eq!(v["outcome"], "end");
    assert_eq!(v["bytes"], 2_000_000);
    assert_eq!(v["verified"], true);
    assert!(v["backing"].as_str().unwrap().starts_with("shmem"));
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["gbit_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["rate_gbit_per_s"].as_f64().unwrap(), 0.4);
    assert!(v["starvations"].is_u64());
    assert!(v["starvation_seconds"].is_f64());
    assert!(v["error"].is_null());
    assert!(v["xxh3_128"].is_null(), "no --hash, no digest: {v}");
    let first = v["first_data_seconds"].as_f64().unwrap();
    assert!(
        first >= 0.0 && first <= v["seconds"].as_f64().unwrap(),
        "{v}"
    );
    assert!(v["active_gbit_per_s"].as_f64().unwrap() > 0.0, "{v}");
    // 2 MB at 50 MB/s is paced: at least ~40 ms (sleeping, not a busy loop).
    assert!(v["seconds"].as_f64().unwrap() >= 0.035, "{v}");
    assert!(srv.wait().unwrap().success());
}

#[test]
fn verification_failure_names_first_bad_offset() {
    let (mut srv, path) = serve("bad", &["--bytes", "3000000", "--corrupt-at", "1234567"]);
    let o = read(&path, &["--verify", "0:0", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v = json(&o);
    assert_eq!(v["outcome"], "verify_failed");
    assert_eq!(v["bad_offset"], 1_234_567);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("first bad byte at offset 1234567"), "{err}");
    srv.wait().unwrap();
}

#[test]
fn abort_exits_with_reason() {
    let (mut srv, path) = serve("abort", &["--bytes", "100000000", "--abort-at", "1000000"]);
    let o = read(&path, &[]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stream aborted: cancelled"), "{err}");
    assert!(srv.wait().unwrap().success());
}

#[test]
fn dead_writer_exits_with_message() {
    let (mut srv, path) = serve("dead", &["--bytes", "100000000", "--die-at", "1000000"]);
    let o = read(&path, &["--json"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(json(&o)["outcome"], "writer_dead");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("died before the end of the stream"), "{err}");
    assert_eq!(srv.wait().unwrap().code(), Some(9));
    let _ = std::fs::remove_file(&path);
}

/// Issue 12, defect 1: each reader reports the bytes it read itself. One that joins after an
/// earlier reader left reads the rest and says where it started; reading a stream that was
/// read to its end fails (exit 1) and says so, never a success with the stream's length.
#[test]
fn a_late_reader_reports_its_own_bytes_and_a_consumed_stream_is_an_error() {
    const TOTAL: u64 = 3 * 1024 * 1024 + 77;
    const FIRST: u64 = 1_000_003;
    let (mut srv, path) = serve(
        "again",
        &[
            "--bytes",
            &TOTAL.to_string(),
            "--seed",
            "5",
            "--capacity",
            "4MiB",
            "--hold",
        ],
    );
    // The earlier reader (this process) reads the first FIRST bytes, then detaches.
    let mut r = spate_ring::handoff::connect(&path, "s").unwrap();
    while r.position() < FIRST {
        let want = (FIRST - r.position()) as usize;
        let n = match r.acquire(1, want, None).unwrap() {
            spate_ring::Acquired::Data(b) => b.data.len(),
            other => panic!("{other:?} before offset {FIRST}"),
        };
        r.release(n).unwrap();
    }
    drop(r);
    let o = read(&path, &["--verify", "5:0", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    assert_eq!(v["outcome"], "end");
    assert_eq!(v["bytes"], TOTAL - FIRST, "{v}");
    assert_eq!(v["start_offset"], FIRST, "{v}");
    assert_eq!(v["verified"], true);
    // The stream is read to its end now: a third reader is told so.
    for extra in [&["--verify", "5:0", "--json"][..], &[]] {
        let o = read(&path, extra);
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("the stream was already read to its end: an earlier reader (pid ")
                && err.contains(&format!(
                    ", detached) read and released all {TOTAL} bytes; nothing is left to read"
                )),
            "{err}"
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains("verified"), "{out}");
    }
    drop(srv.stdin.take());
    assert!(srv.wait().unwrap().success());
}

#[test]
fn unknown_key_and_missing_socket_fail_clearly() {
    let o = read(&sock("none"), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot attach to stream \"s\""), "{err}");
    assert!(err.contains("connect to hand-off socket"), "{err}");
}

#[test]
fn a_reader_of_a_job_with_a_rate_reads_at_it_after_the_prefill() {
    // 4 MiB told to be read at 80 Mbit/s (10 MB/s: about 0.4 s) after 1 MiB of prefill.
    let bytes = 4u64 << 20;
    let (mut srv, path) = serve(
        "paced",
        &[
            "--bytes",
            &bytes.to_string(),
            "--seed",
            "3",
            "--pace-bps",
            "80000000",
            "--prefill",
            "1048576",
            "--capacity",
            "2MiB",
        ],
    );
    let o = read(&path, &["--verify", "3:0", "--json", "--block", "64KiB"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json(&o);
    assert_eq!(r["rate_from"], "job", "{r}");
    assert_eq!(r["rate_gbit_per_s"].as_f64(), Some(0.08), "{r}");
    assert_eq!(r["prefill_bytes"].as_u64(), Some(1 << 20), "{r}");
    assert_eq!(r["bytes"].as_u64(), Some(bytes), "{r}");
    assert_eq!(r["verified"], true, "{r}");
    // Paced: it cannot have read 4 MiB at 10 MB/s in much less than 0.3 s (3 MiB after the
    // first block of the prefill is due at once).
    assert!(r["seconds"].as_f64().unwrap() > 0.25, "{r}");
    assert!(srv.wait().unwrap().success());

    // --no-pace reads as fast as it can, and says it was unpaced.
    let (mut srv, path) = serve(
        "unpaced",
        &[
            "--bytes",
            &bytes.to_string(),
            "--seed",
            "3",
            "--pace-bps",
            "80000000",
            "--prefill",
            "1048576",
            "--capacity",
            "2MiB",
        ],
    );
    let o = read(&path, &["--verify", "3:0", "--json", "--no-pace"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json(&o);
    assert_eq!(r["rate_from"], serde_json::Value::Null, "{r}");
    assert_eq!(r["prefill_bytes"].as_u64(), Some(0), "{r}");
    assert!(srv.wait().unwrap().success());
}
