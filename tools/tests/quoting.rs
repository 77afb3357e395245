//! `spate` command errors quote what the user typed: control characters and bidi overrides
//! are escaped, long values cut saying how long they were, and the error stays one line
//! (issue 12, defect 9). The real binary, as a user runs it.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_spate");

fn spate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SPATE_SOCKET")
        .output()
        .unwrap()
}

/// The error printed: exactly one line of plain text.
fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    let line = err.strip_suffix('\n').unwrap_or_else(|| panic!("{err:?}"));
    for c in line.chars() {
        assert!(
            !c.is_control() && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'),
            "raw U+{:04X} in {err:?}",
            c as u32
        );
    }
    line.to_string()
}

#[test]
fn read_quotes_the_key_and_the_socket_path() {
    let dir = std::env::temp_dir();
    let sock = format!(
        "{}/spate-q-{}-no\nsuch\u{1b}[2J",
        dir.display(),
        std::process::id()
    );
    let o = spate(&["read", "--socket", &sock, "--key", "k\u{202e}\u{7}"]);
    let e = one_line_error(&o);
    let shown = format!(
        "\"{}/spate-q-{}-no\\nsuch\\u{{1b}}[2J\"",
        dir.display(),
        std::process::id()
    );
    assert!(
        e.starts_with(&format!(
            r#"spate: error: cannot attach to stream "k\u{{202e}}\u{{7}}" at {shown}: connect to hand-off socket {shown}: "#
        )),
        "{e}"
    );
}

#[test]
fn read_cuts_a_long_key_saying_how_long_it_was() {
    let key = "k".repeat(100_000);
    let o = spate(&["read", "--socket", "/nonexistent/s.sock", "--key", &key]);
    let e = one_line_error(&o);
    assert_eq!(
        e,
        format!(
            "spate: error: cannot attach to stream \"{}\"… (cut; 100000 bytes in all) at \
             \"/nonexistent/s.sock\": bad stream key: 100000 bytes; must be 1..=1024",
            "k".repeat(spate_netlib::text::MAX_SHOWN)
        )
    );
}

#[test]
fn node_quotes_a_bad_interface() {
    let o = spate(&[
        "node",
        "--name",
        "n1",
        "--producer",
        "--interface",
        "eth\u{1b}[31m0=10.0.0.\n1",
    ]);
    let e = one_line_error(&o);
    assert!(
        e.starts_with(
            r#"spate: error: interface "eth\u{1b}[31m0=10.0.0.\n1": "10.0.0.\n1" is not an IP address (want NAME=ADDRESS)"#
        ),
        "{e}"
    );
}
