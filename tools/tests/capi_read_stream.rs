//! The C reader library (`ring/capi`): its example `read_stream.c`, built with gcc against
//! the library through its pkg-config file, reads streams served by `spate ring-serve` (real
//! processes); its output equals `spate read --out` byte for byte, and aborts and a dead
//! writer give exit codes 3 and 4 with a message.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_spate");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The target directory of this build (where `spate` and `libspate.so` are).
fn target_dir() -> PathBuf {
    Path::new(BIN).parent().unwrap().to_path_buf()
}

/// Builds libspate (a no-op when `cargo test --workspace` built it already) and the example
/// with gcc, flags from `ring/capi/spate.pc`.
fn build_example() -> Option<PathBuf> {
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("SKIP: no gcc (apt-get install gcc)");
        return None;
    }
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: no pkg-config (apt-get install pkg-config)");
        return None;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "spate-capi"])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(st.success(), "cargo build -p spate-capi failed");
    let lib = target_dir();
    assert!(
        lib.join("libspate.so").exists(),
        "no libspate.so in {}",
        lib.display()
    );
    assert!(
        lib.join("libspate.a").exists(),
        "no libspate.a in {}",
        lib.display()
    );
    let include = repo().join("ring/capi/include");
    let pc = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", repo().join("ring/capi"))
        .arg(format!("--define-variable=libdir={}", lib.display()))
        .arg(format!(
            "--define-variable=includedir={}",
            include.display()
        ))
        .args(["--cflags", "--libs", "spate"])
        .output()
        .unwrap();
    assert!(
        pc.status.success(),
        "{}",
        String::from_utf8_lossy(&pc.stderr)
    );
    let flags = String::from_utf8(pc.stdout).unwrap();
    let exe = std::env::temp_dir().join(format!("spate-read_stream-{}", std::process::id()));
    let out = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1"])
        .arg(repo().join("ring/capi/examples/read_stream.c"))
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

fn sock(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("spate-capi-{}-{name}.sock", std::process::id()))
}

/// `spate ring-serve` with its READY line read.
#[allow(clippy::zombie_processes)] // the callers wait for it
fn serve(name: &str, extra: &[&str]) -> (Child, PathBuf) {
    let path = sock(name);
    let mut c = Command::new(BIN)
        .args(["ring-serve", "--no-hugetlb", "--key", "k", "--socket"])
        .arg(&path)
        .args(extra)
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

const STREAM: &[&str] = &[
    "--bytes",
    "3149123",
    "--seed",
    "11",
    "--stream",
    "1",
    "--chunk",
    "65536",
    "--capacity",
    "1MiB",
];

#[test]
fn the_c_example_reads_what_spate_read_reads_and_reports_aborts() {
    let Some(exe) = build_example() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("spate-capi-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The same stream twice: once through the C library, once through `spate read --out`.
    let (mut srv, path) = serve("c", STREAM);
    let c_out = dir.join("c.raw");
    let o = Command::new(&exe)
        .arg(&path)
        .arg("k")
        .arg(&c_out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("read_stream: 3149123 bytes"), "{err}");
    assert!(srv.wait().unwrap().success());

    let (mut srv, path) = serve("rs", STREAM);
    let rs_out = dir.join("rs.raw");
    let o = Command::new(BIN)
        .args(["read", "--key", "k", "--socket"])
        .arg(&path)
        .arg("--out")
        .arg(&rs_out)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(srv.wait().unwrap().success());
    let (a, b) = (
        std::fs::read(&c_out).unwrap(),
        std::fs::read(&rs_out).unwrap(),
    );
    assert_eq!(a.len(), 3149123);
    assert!(a == b, "the C reader's bytes differ from spate read's");

    // Aborted by the writer: exit 3 with the reason.
    let mut abort = STREAM.to_vec();
    abort.extend(["--abort-at", "1000000"]);
    let (mut srv, path) = serve("abort", &abort);
    let o = Command::new(&exe)
        .arg(&path)
        .arg("k")
        .arg(dir.join("a.raw"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("read_stream: stream aborted: cancelled"),
        "{err}"
    );
    let _ = srv.wait();

    // The writer dies: exit 4.
    let mut die = STREAM.to_vec();
    die.extend(["--die-at", "1000000"]);
    let (mut srv, path) = serve("die", &die);
    let o = Command::new(&exe)
        .arg(&path)
        .arg("k")
        .arg(dir.join("d.raw"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("read_stream: "), "{err}");
    let _ = srv.wait();

    // A key nobody serves: exit 1 with the library's message.
    let (mut srv, path) = serve("key", STREAM);
    let o = Command::new(&exe)
        .arg(&path)
        .arg("nope")
        .arg(dir.join("k.raw"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("read_stream: "), "{err}");
    let _ = srv.kill();
    let _ = srv.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&exe);
}
