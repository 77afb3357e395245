//! User strings in spec errors, refusals, aborts and join refusals are quoted with control and
//! invisible characters escaped and long values cut (issue 12, defect 9): every message stays
//! one line of plain text, whatever the user wrote.

mod common;

use common::*;
use spate_scheduler::core::{
    AbortReason, ClientId, Command, Event, Leave, Refusal, Reply, Scheduler, Submission,
};
use spate_scheduler::policy::LoadBalance;
use spate_scheduler::spec::JobPlan;

/// Nothing in `m` that could move the cursor, ring, hide or reorder text.
fn plain(m: &str) {
    for c in m.chars() {
        assert!(
            !c.is_control() && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'),
            "raw U+{:04X} in {m:?}",
            c as u32
        );
    }
}

fn spec_error(text: &str) -> String {
    let e = JobPlan::parse(text).unwrap_err().to_string();
    plain(&e);
    e
}

#[test]
fn spec_errors_escape_what_the_user_wrote() {
    let e = spec_error(
        "kernel = \"pat\\ntern\\u0007\\u001b[31m\\u202e\"\nsize = \"1MiB\"\nnode = \"c\"\n",
    );
    assert_eq!(
        e,
        r#"kernel: unknown kernel "pat\ntern\u{7}\u{1b}[31m\u{202e}" (known: pattern, null, rip)"#
    );
    // A field name with a newline and an escape sequence, in the error's field path.
    let e =
        spec_error("kernel = \"null\"\nsize = \"1MiB\"\nnode = \"c\"\n\"no\\nde\\u001b\" = 1\n");
    assert!(
        e.starts_with(r"no\nde\u{1b}: no such field (known: "),
        "{e}"
    );
    // A bad unit value.
    let e = spec_error("kernel = \"null\"\nsize = \"12\\u0000XB\"\nnode = \"c\"\n");
    assert!(
        e.starts_with(r#"size: unknown unit "\0XB" (known: "#),
        "{e}"
    );
}

#[test]
fn long_spec_values_are_cut_saying_how_long_they_were() {
    let long = "k".repeat(100_000);
    let e = spec_error(&format!(
        "kernel = \"{long}\"\nsize = \"1MiB\"\nnode = \"c\"\n"
    ));
    assert_eq!(
        e,
        format!(
            "kernel: unknown kernel \"{}\"… (cut; 100000 bytes in all) (known: pattern, null, rip)",
            "k".repeat(spate_netlib::text::MAX_SHOWN)
        )
    );
}

#[test]
fn refusals_and_aborts_quote_node_names() {
    let r = Refusal::MissingOutputNode {
        stream: 1,
        node: "printer\n2\u{7}".into(),
    };
    assert_eq!(
        r.to_string(),
        r#"stream 1: output node "printer\n2\u{7}" is not connected; start its consumer daemon or fix the spec"#
    );
    let r = Refusal::AllocFailed {
        stream: 0,
        node: "c\u{202e}1".into(),
        reason: "line one\nline two".into(),
    };
    assert_eq!(
        r.to_string(),
        r#"stream 0: node "c\u{202e}1" could not allocate its ring: line one\nline two"#
    );
    let a = AbortReason::ConsumerLost {
        node: "\u{1b}]0;owned\u{7}".into(),
        how: Leave::Crash,
    };
    assert_eq!(
        a.to_string(),
        r#"output node "\u{1b}]0;owned\u{7}" crashed"#
    );
    let a = AbortReason::ChunkFailed {
        chunk: 3,
        attempts: 2,
        reason: "x".repeat(5000),
    };
    let m = a.to_string();
    assert!(m.ends_with("… (cut; 5000 bytes in all))"), "{m}");
    assert!(m.len() < 500, "{} bytes", m.len());
}

#[test]
fn a_duplicate_node_name_is_refused_on_one_line() {
    let mut s = Scheduler::new(Box::new(LoadBalance::default()));
    let name = "rip\n1\u{0}\u{202e}";
    s.handle(
        0,
        Event::NodeJoined {
            node: P1,
            info: info(name, "h1", true, false),
        },
    );
    let out = s.handle(
        0,
        Event::NodeJoined {
            node: P2,
            info: info(name, "h2", true, false),
        },
    );
    let reason = out
        .iter()
        .find_map(|c| match c {
            Command::RefuseNode { node, reason } if *node == P2 => Some(reason.clone()),
            _ => None,
        })
        .expect("the second node is refused");
    assert_eq!(
        reason,
        r#"a node named "rip\n1\0\u{202e}" is already connected: give each daemon a unique name"#
    );
    // A job naming an output node with control characters, or one that is not connected, gets
    // a one-line refusal.
    let mut refusal = |spec: &str| {
        let out = s.handle(
            0,
            Event::Submit {
                client: ClientId(9),
                spec: Submission::Toml(spec.into()),
            },
        );
        let m = out
            .iter()
            .find_map(|c| match c {
                Command::Reply {
                    reply: Reply::Refused(r),
                    ..
                } => Some(r.to_string()),
                _ => None,
            })
            .expect("refused");
        plain(&m);
        m
    };
    let m = refusal("kernel = \"null\"\nsize = \"1MiB\"\nnode = \"pr\\rinter\"\n");
    assert!(
        m.starts_with(r#"invalid job spec: node: "pr\rinter" is invalid: "#),
        "{m}"
    );
    let m = refusal("kernel = \"null\"\nsize = \"1MiB\"\nnode = \"pr\\u202Einter\"\n");
    assert!(
        m.contains(r#"output node "pr\u{202e}inter" is not connected"#),
        "{m}"
    );
}
