//! Job spec parsing and validation.

use spate_scheduler::spec::{
    JobPlan, Kernel, Piece, ReaderDeath, SpecError, SpecErrorKind, UnitError,
};
use std::time::Duration;

fn err(text: &str) -> SpecError {
    match JobPlan::parse(text) {
        Ok(p) => panic!("spec was accepted: {p:?}\n{text}"),
        Err(e) => e,
    }
}

const BASE: &str = "kernel = \"pattern\"\nsize = \"1MiB\"\nnode = \"n1\"\n";

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn minimal_pattern() {
    let p = JobPlan::parse(BASE).unwrap();
    assert_eq!(p.kernel, Kernel::Pattern);
    assert_eq!(p.geometry.channels, 1);
    assert_eq!(p.geometry.line_bytes, 64 << 10);
    assert_eq!(p.geometry.lines, 16);
    assert_eq!(p.geometry.pixels, None);
    assert_eq!(p.streams.len(), 1);
    assert_eq!(p.streams[0].node, "n1");
    assert_eq!(p.streams[0].len, 1 << 20);
    assert_eq!(p.streams[0].lines, 0..16);
    assert_eq!(p.chunk_lines, None);
    assert_eq!(p.on_reader_death, ReaderDeath::Abort);
    assert_eq!(p.total_bytes(), 1 << 20);
}

#[test]
fn full_example_parses() {
    let text = r#"
name = "poster"
kernel = "rip"
inputs = ["poster.tiff", "profiles/fogra39.icc"]
sheet = "40x40in"
dpi = 900
bits = 8
channels = 4
split = "channel"
node = "printer"
chunk = "200Mbit"
rate = "2.5Gbit"
latency = "2s"
on_reader_death = "keep"
[[stream]]
node = "printer-cyan"
[params]
ink_limit = 2.8
"#;
    let p = JobPlan::parse(text).unwrap();
    assert_eq!(p.name.as_deref(), Some("poster"));
    assert_eq!(p.kernel, Kernel::Rip);
    assert_eq!(p.inputs, vec!["poster.tiff", "profiles/fogra39.icc"]);
    assert_eq!(p.geometry.lines, 36000);
    assert_eq!(p.geometry.line_bytes, 36000);
    let nodes: Vec<_> = p.streams.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes, ["printer-cyan", "printer", "printer", "printer"]);
    // 200 Mbit = 25 000 000 bytes = 694 lines of 36000 bytes (rounded down).
    assert_eq!(p.chunk_lines, Some(694));
    assert_eq!(p.rate_bps, Some(2_500_000_000));
    assert_eq!(p.latency, Some(Duration::from_secs(2)));
    assert_eq!(p.on_reader_death, ReaderDeath::Keep);
    assert_eq!(p.params.get("ink_limit"), Some(&toml::Value::Float(2.8)));
    assert!(p.params_toml().contains("ink_limit = 2.8"));
}

#[test]
fn reference_jobs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/jobs");
    for (name, side, dpi, bits_per_channel) in [
        ("A", 3000u64, 300u32, 72_000_000u64),
        ("B", 36000, 900, 10_368_000_000),
        ("C", 120000, 1200, 115_200_000_000),
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{name}.toml")).unwrap();
        let p = JobPlan::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.kernel, Kernel::Rip, "{name}");
        assert_eq!(p.geometry.channels, 4, "{name}");
        assert_eq!(p.geometry.lines, side, "{name}");
        assert_eq!(p.geometry.line_bytes, side, "{name}");
        let px = p.geometry.pixels.clone().unwrap();
        assert_eq!((px.width, px.height, px.bits), (side, side, 8), "{name}");
        assert_eq!(px.dpi, Some((dpi, dpi)), "{name}");
        assert_eq!(p.geometry.channel_bytes() * 8, bits_per_channel, "{name}");
        assert_eq!(p.streams.len(), 4, "{name}");
        for (i, s) in p.streams.iter().enumerate() {
            assert_eq!(s.index as usize, i);
            assert_eq!(s.channel as usize, i);
            assert_eq!(s.node, "local");
            assert_eq!(s.len * 8, bits_per_channel);
        }
    }
}

#[test]
fn geometry_forms() {
    let p = JobPlan::parse(
        "kernel = \"null\"\nlines = 10\nline_bytes = \"1KiB\"\nchannels = 3\nnode = \"n\"",
    )
    .unwrap();
    assert_eq!(
        (p.geometry.channels, p.geometry.lines, p.geometry.line_bytes),
        (3, 10, 1024)
    );
    assert_eq!(p.streams.len(), 3);
    let p = JobPlan::parse("kernel = \"rip\"\nwidth = 1001\nheight = 7\nbits = 1\nnode = \"n\"")
        .unwrap();
    assert_eq!(
        (p.geometry.channels, p.geometry.lines, p.geometry.line_bytes),
        (4, 7, 126)
    );
    let p =
        JobPlan::parse("kernel = \"rip\"\nsheet = \"210x297mm\"\ndpi = \"600x300\"\nnode = \"n\"")
            .unwrap();
    // 210 mm = 8.2677 in x 600 = 4960.6 -> 4961; 297 mm = 11.693 in x 300 = 3507.9 -> 3508.
    let px = p.geometry.pixels.unwrap();
    assert_eq!(
        (px.width, px.height, px.dpi),
        (4961, 3508, Some((600, 300)))
    );
    let p =
        JobPlan::parse(&with("line_bytes = 1000\nsize = 5000\n").replace("size = \"1MiB\"\n", ""))
            .unwrap();
    assert_eq!((p.geometry.lines, p.geometry.line_bytes), (5, 1000));
    // Small sizes get one line of the whole size.
    let p = JobPlan::parse("kernel = \"null\"\nsize = 100\nnode = \"n\"").unwrap();
    assert_eq!((p.geometry.lines, p.geometry.line_bytes), (1, 100));
}

#[test]
fn split_lines_and_layout() {
    let p = JobPlan::parse(
        "kernel = \"null\"\nlines = 10\nline_bytes = 100\nchannels = 2\nsplit = { lines = 3 }\nnode = \"n\"\nchunk = { lines = 2 }",
    )
    .unwrap();
    assert_eq!(p.parts, 3);
    assert_eq!(p.streams.len(), 6);
    let ranges: Vec<_> = p
        .streams
        .iter()
        .map(|s| (s.channel, s.lines.clone(), s.len))
        .collect();
    assert_eq!(
        ranges,
        [
            (0, 0..3, 300),
            (0, 3..6, 300),
            (0, 6..10, 400),
            (1, 0..3, 300),
            (1, 3..6, 300),
            (1, 6..10, 400)
        ]
    );
    let l = p.layout(p.chunk_lines.unwrap());
    // Parts of 3, 3, 4 lines in chunks of 2: 2 + 2 + 2 chunks.
    assert_eq!(l.chunk_count(), 6);
    assert_eq!(l.max_piece_bytes(), 200);
    let c = l.chunk(1).unwrap();
    assert_eq!(c.lines, 2..3);
    assert_eq!(
        c.pieces,
        vec![
            Piece {
                stream: 0,
                channel: 0,
                offset: 200,
                len: 100
            },
            Piece {
                stream: 3,
                channel: 1,
                offset: 200,
                len: 100
            }
        ]
    );
    let c = l.chunk(5).unwrap();
    assert_eq!(c.lines, 8..10);
    assert_eq!(
        c.pieces[1],
        Piece {
            stream: 5,
            channel: 1,
            offset: 200,
            len: 200
        }
    );
    assert_eq!(l.locate(5), Some((2, 1)));
    assert_eq!(l.index(2, 1), Some(5));
    assert_eq!(l.chunk(6), None);
    // Every stream is covered exactly, in order, by its pieces.
    let mut next = vec![0u64; 6];
    for k in 0..l.chunk_count() {
        for piece in l.chunk(k).unwrap().pieces {
            assert_eq!(piece.offset, next[piece.stream as usize]);
            next[piece.stream as usize] += piece.len;
        }
    }
    assert_eq!(next, p.streams.iter().map(|s| s.len).collect::<Vec<_>>());
}

#[test]
fn chunk_forms() {
    let p = JobPlan::parse(&with("chunk = \"200KiB\"")).unwrap();
    assert_eq!(p.chunk_lines, Some(3));
    let p = JobPlan::parse(&with("chunk = 131072")).unwrap();
    assert_eq!(p.chunk_lines, Some(2));
    // Larger than the job: clamped to all lines.
    let p = JobPlan::parse(&with("chunk = { lines = 1000 }")).unwrap();
    assert_eq!(p.chunk_lines, Some(16));
}

fn assert_field(text: &str, field: &str) -> SpecErrorKind {
    let e = err(text);
    assert_eq!(e.field, field, "{e}");
    assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
    e.kind
}

#[test]
fn unknown_fields_are_named() {
    let k = assert_field(
        &with("[[stream]]\nnode = \"a\"\n[[stream]]\nnod = \"x\"\n")
            .replace("size = \"1MiB\"", "size = \"1MiB\"\nchannels = 2"),
        "stream[1].nod",
    );
    assert_eq!(
        k,
        SpecErrorKind::UnknownField {
            name: "nod".into(),
            known: "node".into()
        }
    );
    let k = assert_field(&with("splt = 3"), "splt");
    assert!(matches!(k, SpecErrorKind::UnknownField { ref name, .. } if name == "splt"));
    let k = assert_field(&with("split = { line = 3 }"), "split.line");
    assert!(matches!(k, SpecErrorKind::UnknownField { ref name, .. } if name == "line"));
    assert_eq!(
        err(&with("splt = 3"))
            .to_string()
            .split(" (known")
            .next()
            .unwrap(),
        "splt: no such field"
    );
}

#[test]
fn invalid_values_are_named() {
    assert_eq!(
        assert_field("kernel = \"foo\"\nsize = 5\nnode = \"n\"", "kernel"),
        SpecErrorKind::UnknownKernel { name: "foo".into() }
    );
    assert_eq!(
        err("kernel = \"foo\"").to_string(),
        "kernel: unknown kernel \"foo\" (known: pattern, null, rip)"
    );
    assert!(matches!(
        assert_field("size = 5\nnode = \"n\"", "kernel"),
        SpecErrorKind::Missing { .. }
    ));
    assert_eq!(
        assert_field(&with("chunk = \"0MiB\""), "chunk"),
        SpecErrorKind::NotPositive {
            value: "0MiB".into()
        }
    );
    assert_eq!(
        err(&with("chunk = \"0MiB\"")).to_string(),
        "chunk: \"0MiB\" must be > 0"
    );
    assert_eq!(
        assert_field(&with("chunk = \"4 parsecs\""), "chunk"),
        SpecErrorKind::Unit(UnitError::UnknownUnit {
            unit: "parsecs".into(),
            known: "B, kB, MB, GB, TB (bytes, powers of 1000), KiB, MiB, GiB, TiB (bytes, \
                    powers of 1024), bit or b, kbit or kb, Mbit or Mb, Gbit or Gb, Tbit or Tb \
                    (bits, powers of 1000)"
        })
    );
    assert!(matches!(
        assert_field(&with("chunk = \"100B\""), "chunk"),
        SpecErrorKind::Invalid { .. }
    ));
    assert_eq!(
        assert_field(&with("chunk = { lines = 0 }"), "chunk.lines"),
        SpecErrorKind::NotPositive { value: "0".into() }
    );
    assert!(matches!(
        assert_field(&with("rate = \"fast\""), "rate"),
        SpecErrorKind::Unit(UnitError::BadNumber(_))
    ));
    assert!(matches!(
        assert_field(&with("rate = 5"), "rate"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("latency = \"5h\""), "latency"),
        SpecErrorKind::Unit(UnitError::UnknownUnit { .. })
    ));
    assert!(matches!(
        assert_field(&with("on_reader_death = \"ignore\""), "on_reader_death"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("split = \"rows\""), "split"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("split = { lines = 17 }"), "split.lines"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("channels = 0"), "channels"),
        SpecErrorKind::NotPositive { .. }
    ));
    assert!(matches!(
        assert_field(&with("channels = 65"), "channels"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("lines = \"x\""), "lines"),
        SpecErrorKind::Syntax(_)
    ));
    assert!(matches!(
        assert_field(&with("inputs = [\"../etc/passwd\"]"), "inputs[0]"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("inputs = [\"a\", \"/b\"]"), "inputs[1]"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("inputs = [\"a\", \"a\"]"), "inputs[1]"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("name = \"\""), "name"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field("kernel = \"null\"\nsize = \"1MiB\"\nnode = \"a b\"", "node"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("[[stream]]\nnode = 3"), "stream[0].node"),
        SpecErrorKind::Syntax(_)
    ));
    assert!(matches!(
        assert_field(&with("[[stream]]\n[[stream]]"), "stream[1]"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("size = [1"), "(spec)"),
        SpecErrorKind::Syntax(_)
    ));
}

#[test]
fn geometry_errors_are_named() {
    assert!(matches!(
        assert_field("kernel = \"null\"\nnode = \"n\"", "size"),
        SpecErrorKind::Missing { .. }
    ));
    assert!(matches!(
        assert_field(
            "kernel = \"null\"\nsize = 1000\nline_bytes = 300\nnode = \"n\"",
            "size"
        ),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(&with("lines = 3"), "lines"),
        SpecErrorKind::Conflict { ref other, .. } if other == "size"
    ));
    assert!(matches!(
        assert_field("kernel = \"rip\"\nsize = \"1MiB\"\nnode = \"n\"", "size"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field("kernel = \"rip\"\nnode = \"n\"", "sheet"),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field("kernel = \"rip\"\nsheet = \"10x10in\"\nnode = \"n\"", "dpi"),
        SpecErrorKind::Missing { .. }
    ));
    assert!(matches!(
        assert_field(
            "kernel = \"rip\"\nsheet = \"10x10ft\"\ndpi = 300\nnode = \"n\"",
            "sheet"
        ),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field(
            "kernel = \"rip\"\nsheet = \"10x10in\"\ndpi = 0\nnode = \"n\"",
            "dpi"
        ),
        SpecErrorKind::NotPositive { .. }
    ));
    assert!(matches!(
        assert_field(
            "kernel = \"rip\"\nwidth = 10\nheight = 10\nbits = 3\nnode = \"n\"",
            "bits"
        ),
        SpecErrorKind::Invalid { .. }
    ));
    assert!(matches!(
        assert_field("kernel = \"rip\"\nwidth = 10\nnode = \"n\"", "height"),
        SpecErrorKind::Missing { .. }
    ));
    assert!(matches!(
        assert_field(
            "kernel = \"rip\"\nwidth = 10\nheight = 10\nline_bytes = 5\nnode = \"n\"",
            "line_bytes"
        ),
        SpecErrorKind::Conflict { .. }
    ));
    assert!(matches!(
        assert_field("kernel = \"null\"\nlines = 4\nnode = \"n\"", "line_bytes"),
        SpecErrorKind::Missing { .. }
    ));
}

#[test]
fn every_stream_needs_a_node() {
    let k = assert_field(
        "kernel = \"null\"\nsize = 100\nchannels = 2\n[[stream]]\nnode = \"a\"",
        "stream[1].node",
    );
    assert!(matches!(k, SpecErrorKind::Missing { .. }));
    let p = JobPlan::parse("kernel = \"null\"\nsize = 100\nchannels = 2\n[[stream]]\nnode = \"a\"\n[[stream]]\nnode = \"b\"").unwrap();
    assert_eq!(p.streams[1].node, "b");
}

#[test]
fn oversized_spec_refused() {
    let text = format!("{BASE}# {}", "x".repeat(1 << 20));
    assert!(matches!(
        assert_field(&text, "(spec)"),
        SpecErrorKind::Invalid { .. }
    ));
}
