//! Showing user strings in messages: [`quote`].
//!
//! Names, keys, paths and values that come from users (or from any peer) are echoed in errors,
//! refusals and logs. Raw, they can break a message over several lines (a newline in a node
//! name), drive the terminal (BEL, ESC sequences), hide or reorder text (NUL, zero-width
//! characters, bidi overrides such as U+202E) or flood it (a 100,000-character value). Every
//! such string goes through [`quote`] (or [`Quoted`], the same thing with options): in double
//! quotes, with every character that is not plainly visible escaped, and cut after
//! [`MAX_SHOWN`] characters of shown text, saying how long the value was.
//!
//! Escapes, Rust-style: `\"`, `\\`, `\n`, `\r`, `\t`, `\0`; any other control character
//! (C0, DEL, C1) and every invisible or direction-changing format character as `\u{202e}`;
//! bytes that are not UTF-8 (in [`Quoted::bytes`] and [`Quoted::path`]) as `\xff`. Everything
//! else, including non-ASCII letters, is shown as it is.

use std::fmt::{self, Write as _};

/// Most characters of a value shown (counting escapes as written) before it is cut.
pub const MAX_SHOWN: usize = 120;

/// `s` as shown in a message: `"like this"`, escaped, cut after [`MAX_SHOWN`] characters
/// (then followed by `… (cut; N bytes in all)`).
///
/// ```
/// use spate_netlib::text::quote;
/// assert_eq!(quote("printer 2"), r#""printer 2""#);
/// assert_eq!(quote("a\nb\u{1b}[31m\u{202e}"), r#""a\nb\u{1b}[31m\u{202e}""#);
/// ```
pub fn quote(s: &str) -> String {
    Quoted::new(s).to_string()
}

/// A user string to show in a message (see the module docs); `Display` writes it.
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a> {
    bytes: &'a [u8],
    max: usize,
    marks: bool,
}

impl<'a> Quoted<'a> {
    /// A string, shown in quotes and cut after [`MAX_SHOWN`] characters.
    pub fn new(s: &'a str) -> Quoted<'a> {
        Quoted::bytes(s.as_bytes())
    }

    /// Bytes that should be text but may not be UTF-8 (invalid bytes are shown as `\xNN`).
    pub fn bytes(b: &'a [u8]) -> Quoted<'a> {
        Quoted {
            bytes: b,
            max: MAX_SHOWN,
            marks: true,
        }
    }

    /// A path (its bytes, as the system has them).
    pub fn path(p: &'a std::path::Path) -> Quoted<'a> {
        use std::os::unix::ffi::OsStrExt;
        Quoted::bytes(p.as_os_str().as_bytes())
    }

    /// Cut after `max` shown characters instead of [`MAX_SHOWN`].
    pub fn max(self, max: usize) -> Quoted<'a> {
        Quoted { max, ..self }
    }

    /// Without the quote marks, and with `"` and `\` as they are: for a whole message from
    /// elsewhere (a parser's, a peer's) that is embedded in ours and must stay on one line.
    pub fn bare(self) -> Quoted<'a> {
        Quoted {
            marks: false,
            ..self
        }
    }
}

/// Whether `c` is shown escaped: control characters, and format characters that are invisible
/// or change the direction or layout of the text around them.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'                      // soft hyphen
            | '\u{034f}'                    // combining grapheme joiner
            | '\u{061c}'                    // arabic letter mark
            | '\u{115f}' | '\u{1160}'       // hangul fillers
            | '\u{17b4}' | '\u{17b5}'       // khmer inherent vowels
            | '\u{180b}'..='\u{180f}'       // mongolian selectors, vowel separator
            | '\u{200b}'..='\u{200f}'       // zero width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}'       // line/paragraph separators, bidi embeddings/overrides
            | '\u{2060}'..='\u{206f}'       // word joiner, invisible operators, bidi isolates
            | '\u{3164}'                    // hangul filler
            | '\u{feff}'                    // zero width no-break space (BOM)
            | '\u{ffa0}'                    // halfwidth hangul filler
            | '\u{fff9}'..='\u{fffb}'       // interlinear annotation
            | '\u{1d173}'..='\u{1d17a}'     // musical formatting
            | '\u{e0000}'..='\u{e0fff}' // tags, variation selectors supplement
        )
}

/// How `c` is shown.
fn escape(c: char, marks: bool, out: &mut String) {
    match c {
        '"' if marks => out.push_str("\\\""),
        '\\' if marks => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if hidden(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = String::new();
        let mut count = 0usize;
        let mut piece = String::new();
        // Adds one escaped character unless it would pass the limit.
        let mut fits = |piece: &str| {
            let n = piece.chars().count();
            if count + n > self.max {
                return false;
            }
            count += n;
            shown.push_str(piece);
            true
        };
        let mut cut = false;
        'all: for chunk in self.bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                piece.clear();
                escape(c, self.marks, &mut piece);
                if !fits(&piece) {
                    cut = true;
                    break 'all;
                }
            }
            for b in chunk.invalid() {
                piece.clear();
                let _ = write!(piece, "\\x{b:02x}");
                if !fits(&piece) {
                    cut = true;
                    break 'all;
                }
            }
        }
        let q = if self.marks { "\"" } else { "" };
        write!(f, "{q}{shown}{q}")?;
        if cut {
            write!(f, "… (cut; {} bytes in all)", self.bytes.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_shown_as_it_is_in_quotes() {
        assert_eq!(quote(""), r#""""#);
        assert_eq!(quote("printer-2"), r#""printer-2""#);
        assert_eq!(quote("Zürich 東京 ñ"), "\"Zürich 東京 ñ\"");
        assert_eq!(quote("say \"hi\" \\o/"), r#""say \"hi\" \\o/""#);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(quote("a\nb"), r#""a\nb""#);
        assert_eq!(quote("\r\t\0"), r#""\r\t\0""#);
        assert_eq!(quote("bell\u{7}"), r#""bell\u{7}""#);
        assert_eq!(
            quote("\u{1b}[31mred\u{1b}[0m"),
            r#""\u{1b}[31mred\u{1b}[0m""#
        );
        assert_eq!(quote("del\u{7f}"), r#""del\u{7f}""#);
        assert_eq!(quote("c1\u{85}\u{9b}"), r#""c1\u{85}\u{9b}""#);
        // Every C0 control and DEL: none comes through raw.
        for b in (0u8..0x20).chain([0x7f]) {
            let q = quote(&char::from(b).to_string());
            assert!(q.chars().all(|c| !c.is_control()), "{b:#x}: {q:?}");
        }
    }

    #[test]
    fn invisible_and_bidi_characters_are_escaped() {
        assert_eq!(quote("abc\u{202e}fed"), r#""abc\u{202e}fed""#);
        for c in [
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202d}',
            '\u{2066}',
            '\u{2069}',
            '\u{061c}',
            '\u{feff}',
            '\u{2028}',
            '\u{2029}',
            '\u{00ad}',
            '\u{e0041}',
        ] {
            assert_eq!(
                quote(&format!("x{c}y")),
                format!("\"x\\u{{{:x}}}y\"", c as u32)
            );
        }
    }

    #[test]
    fn long_values_are_cut_saying_how_long_they_were() {
        let long = "a".repeat(100_000);
        let q = quote(&long);
        assert_eq!(
            q,
            format!("\"{}\"… (cut; 100000 bytes in all)", "a".repeat(MAX_SHOWN))
        );
        // Exactly the limit is not cut.
        let fits = "b".repeat(MAX_SHOWN);
        assert_eq!(quote(&fits), format!("\"{fits}\""));
        // Escapes count as written and are never split.
        let q = Quoted::new("ab\ncd").max(3).to_string();
        assert_eq!(q, "\"ab\"… (cut; 5 bytes in all)");
        let q = Quoted::new("ab\ncd").max(4).to_string();
        assert_eq!(q, "\"ab\\n\"… (cut; 5 bytes in all)");
        // A value made only of escapes stays bounded too.
        let q = quote(&"\u{202e}".repeat(10_000));
        assert!(q.chars().count() < MAX_SHOWN + 40, "{q}");
        assert!(q.ends_with("… (cut; 30000 bytes in all)"), "{q}");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(
            Quoted::bytes(b"ok\xff\xfe!").to_string(),
            r#""ok\xff\xfe!""#
        );
        let p = std::path::Path::new("/tmp/a\nb");
        assert_eq!(Quoted::path(p).to_string(), r#""/tmp/a\nb""#);
    }

    #[test]
    fn bare_keeps_quotes_and_backslashes_but_still_escapes_and_cuts() {
        let m = "invalid type: string \"x\ny\", expected \\d";
        assert_eq!(
            Quoted::new(m).bare().to_string(),
            r#"invalid type: string "x\ny", expected \d"#
        );
        assert_eq!(
            Quoted::new("abcdef").bare().max(3).to_string(),
            "abc… (cut; 6 bytes in all)"
        );
    }

    #[test]
    fn no_input_gives_a_raw_control_or_format_character() {
        // Every code point up to U+E0FFF, alone and between letters.
        for cp in 0u32..0xe1000 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let q = quote(&format!("a{c}b"));
            for o in q.chars() {
                assert!(!hidden(o), "U+{cp:04X} gave {q:?}");
            }
            assert!(
                q.starts_with("\"a") && q.ends_with("b\""),
                "U+{cp:04X}: {q:?}"
            );
        }
    }
}
