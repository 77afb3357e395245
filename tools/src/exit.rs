//! One table of exit codes for every `spate` command (README "Exit codes" and `spate --help`).
//!
//! 2 is clap's code for a bad command line, so no command uses it for anything else.

/// Success.
pub const OK: i32 = 0;
/// Any error not listed below (bad config, unreadable file, I/O error, ...).
pub const ERROR: i32 = 1;
/// Bad command-line arguments (clap's code).
pub const USAGE: i32 = 2;
/// The job or stream was aborted or cancelled (`read`, `submit --wait`).
pub const ABORTED: i32 = 3;
/// A peer died or went away: the stream's writer (`read`), the scheduler during
/// `submit --wait`.
pub const PEER_GONE: i32 = 4;
/// Data failed verification (`read --verify`, `demo`, `bench`).
pub const VERIFY: i32 = 5;
/// The scheduler refused the job (`submit`).
pub const REFUSED: i32 = 6;
/// No scheduler answers at the endpoint (every command that talks to one).
pub const NO_SCHEDULER: i32 = 7;

/// The table, as `--help` and the README show it.
pub const TABLE: &[(i32, &str)] = &[
    (OK, "success"),
    (
        ERROR,
        "any error not listed below (bad config, unreadable file, I/O error)",
    ),
    (USAGE, "bad command-line arguments"),
    (
        ABORTED,
        "the job or stream was aborted or cancelled (read, submit --wait)",
    ),
    (
        PEER_GONE,
        "a peer died or went away: the stream's writer (read; also after every byte was read but before the end was confirmed, `end_unconfirmed`), the scheduler (submit --wait, status --watch)",
    ),
    (VERIFY, "data failed verification (read --verify, demo)"),
    (REFUSED, "the scheduler refused the job (submit)"),
    (
        NO_SCHEDULER,
        "no scheduler answers at the endpoint (submit, status, cancel, node)",
    ),
];

/// The table as text for `--help`.
pub fn help_text() -> String {
    let mut s = String::from("Exit status (every command):\n");
    for (code, what) in TABLE {
        s.push_str(&format!("  {code}  {what}\n"));
    }
    s
}

#[cfg(test)]
/// The table as the README's Markdown table.
pub fn markdown() -> String {
    let mut s = String::from("| code | meaning |\n|---|---|\n");
    for (code, what) in TABLE {
        s.push_str(&format!("| {code} | {what} |\n"));
    }
    s
}

/// An error that carries its exit code; `main` prints it (once) and exits with the code.
#[derive(Debug)]
pub struct Coded {
    /// The exit code.
    pub code: i32,
    /// The error.
    pub error: anyhow::Error,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)
    }
}

impl std::error::Error for Coded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// The exit code an error deserves: a [`Coded`] anywhere in the chain, an unreachable
/// scheduler, else [`ERROR`].
pub fn code_of(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if let Some(spate_scheduler::server::user::UserError::Connect(_)) = cause.downcast_ref() {
            return NO_SCHEDULER;
        }
    }
    ERROR
}

/// The error's message with each cause printed once: a cause whose text its parent already
/// contains (errors that format their source into their own message) is left out.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open {0}: {1}")]
    struct Wraps(&'static str, #[source] std::io::Error);

    #[test]
    fn a_cause_that_its_parent_already_printed_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Wraps("/x", io)).context("loading the config");
        // anyhow's `{:#}` would print "no such file" twice.
        assert_eq!(
            format!("{e:#}"),
            "loading the config: cannot open /x: no such file: no such file"
        );
        assert_eq!(
            message(&e),
            "loading the config: cannot open /x: no such file"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept_in_order() {
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(message(&e), "outer: middle: inner");
    }

    #[test]
    fn codes_are_distinct_and_clap_keeps_two() {
        let mut seen: Vec<i32> = TABLE.iter().map(|(c, _)| *c).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), TABLE.len());
        assert_eq!(USAGE, 2);
        let e = anyhow::Error::new(Coded {
            code: REFUSED,
            error: anyhow::anyhow!("refused"),
        })
        .context("submitting");
        assert_eq!(code_of(&e), REFUSED);
        assert_eq!(code_of(&anyhow::anyhow!("x")), ERROR);
    }

    #[test]
    fn the_readme_shows_this_table() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&markdown()),
            "README.md must contain the exit-code table exactly as exit::markdown() renders \
             it:\n{}",
            markdown()
        );
    }
}
