//! The README's newcomer path ("Getting started on one host"), run verbatim with bash: the
//! block after `<!-- newcomer-path -->`, with this build's `spate` first on PATH.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spate");

/// The shell block that follows the marker in the README.
fn newcomer_block() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let at = readme
        .find("<!-- newcomer-path -->")
        .expect("README.md has no <!-- newcomer-path --> marker");
    let rest = &readme[at..];
    let start = rest
        .find("```sh\n")
        .expect("no ```sh block after the marker")
        + 6;
    let len = rest[start..].find("```").expect("unterminated block");
    rest[start..start + len].to_string()
}

#[test]
fn the_readme_newcomer_path_works_verbatim() {
    let block = newcomer_block();
    let tmp = std::env::temp_dir().join(format!("spate-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block])
        .env("PATH", path)
        .env("TMPDIR", &tmp) // mktemp -d makes its directory in here
        .env_remove("SPATE_SCHEDULER")
        .env_remove("SPATE_SECRET")
        .env_remove("SPATE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (read_all(Box::new(out)), read_all(Box::new(err)));
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the outcome, nothing the block started outlives the test.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let shown = format!("--- block\n{block}--- stdout\n{out}--- stderr\n{err}");
    let Some(status) = status else {
        panic!("the newcomer path did not finish within 240 s\n{shown}");
    };
    assert!(
        status.success(),
        "the newcomer path failed ({status})\n{shown}"
    );
    for want in [
        "job 1 accepted: 1 stream",
        "job 1 completed",
        "chunk latency (task created -> released in order)",
        "nodes: 1",
        "  local ",
        "67108864 bytes in",
        "pattern verified",
    ] {
        assert!(
            out.contains(want) || err.contains(want),
            "no {want:?}\n{shown}"
        );
    }
    // The run left its files: the stream byte for byte, the latency distribution.
    let dir = std::fs::read_dir(&tmp)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::metadata(dir.join("stream.raw")).unwrap().len(),
        64 << 20
    );
    let hgrm = std::fs::read_to_string(dir.join("chunks.hgrm")).unwrap();
    assert!(hgrm.contains("#[Max     ="), "{hgrm}");
    // Both daemons stopped cleanly and removed their sockets.
    assert!(!dir.join("sched.sock").exists(), "{shown}");
    assert!(!dir.join("local/handoff.sock").exists(), "{shown}");
    let _ = std::fs::remove_dir_all(&tmp);
}
