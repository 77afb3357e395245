//! `spate read --preview`: while reading a stream from `spate ring-serve`, a downscaled PNG of
//! it is written; it decodes, has the expected size, and equals `rip::preview` of the whole
//! stream at once.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use spate_producer::rip::{Ink, SourceKind, decode, preview};

const BIN: &str = env!("CARGO_BIN_EXE_spate");

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("spate-preview-{}-{name}", std::process::id()))
}

/// Start `spate ring-serve` with a pattern stream of `bytes` and wait for its READY line.
#[allow(clippy::zombie_processes)] // the caller waits for the child
fn serve(name: &str, bytes: u64) -> (Child, PathBuf) {
    let path = tmp(&format!("{name}.sock"));
    let mut c = Command::new(BIN)
        .args([
            "ring-serve",
            "--no-hugetlb",
            "--chunk",
            "65536",
            "--seed",
            "5",
        ])
        .args(["--bytes", &bytes.to_string(), "--socket"])
        .arg(&path)
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
        .args(["read", "--key", "s", "--json", "--socket"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap()
}

fn pattern(bytes: u64) -> Vec<u8> {
    let mut v = vec![0u8; bytes as usize];
    spate_ring::pattern::fill(5, 0, 0, &mut v);
    v
}

#[test]
fn preview_has_the_expected_size_and_equals_a_whole_stream_preview() {
    // 1000 × 777 pixels; the ring's chunks do not fall on line boundaries.
    let (w, h) = (1000u32, 777u32);
    let (mut srv, sock) = serve("grey", u64::from(w * h));
    let png = tmp("grey.png");
    let o = read(
        &sock,
        &[
            "--preview",
            png.to_str().unwrap(),
            "--width",
            "1000",
            "--levels",
            "256",
            "--scale",
            "8",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["preview"], png.to_str().unwrap());
    assert!(srv.wait().unwrap().success());
    let got = std::fs::read(&png).unwrap();
    std::fs::remove_file(&png).unwrap();
    let img = decode(&got).unwrap();
    assert_eq!(
        (img.kind, img.width, img.height),
        (SourceKind::Grey, 125, 98)
    );
    let want = preview(&pattern(u64::from(w * h)), w, h, 8, 256, None).unwrap();
    assert!(
        got == want,
        "the streamed preview differs from a whole-stream preview"
    );
}

#[test]
fn default_scale_keeps_the_preview_narrow_and_ink_colours_it() {
    // 3000-pixel lines: the default scale is 3, so 1000 × 34 preview pixels; levels 4.
    let (w, h) = (3000u32, 100u32);
    let (mut srv, sock) = serve("ink", u64::from(w * h));
    let png = tmp("ink.png");
    let o = read(
        &sock,
        &[
            "--preview",
            png.to_str().unwrap(),
            "--width",
            "3000",
            "--ink",
            "m",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(srv.wait().unwrap().success());
    let got = std::fs::read(&png).unwrap();
    std::fs::remove_file(&png).unwrap();
    let img = decode(&got).unwrap();
    assert_eq!(
        (img.kind, img.width, img.height),
        (SourceKind::Rgb, 1000, 34)
    );
    let want = preview(&pattern(u64::from(w * h)), w, h, 3, 4, Some(Ink::M)).unwrap();
    assert!(got == want);
}

#[test]
fn a_width_that_does_not_divide_the_stream_is_an_error() {
    let (mut srv, sock) = serve("odd", 10_000);
    let png = tmp("odd.png");
    let o = read(
        &sock,
        &["--preview", png.to_str().unwrap(), "--width", "3000"],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["outcome"], "error");
    assert!(v["preview"].is_null());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("1000 bytes into a line") && err.contains("--width"),
        "{err}"
    );
    assert!(!png.exists());
    assert!(srv.wait().unwrap().success());
}

#[test]
fn preview_needs_a_width() {
    let o = Command::new(BIN)
        .args([
            "read",
            "--key",
            "s",
            "--socket",
            "/nonexistent",
            "--preview",
            "x.png",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--width"), "{err}");
}
