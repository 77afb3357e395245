//! A job's life to its end: it completes by itself once every stream was read, ended jobs stay
//! visible with their outcome, Done is idempotent, stalls are named, and a reader timeout
//! aborts with its reason.

mod common;

use common::*;
use spate_scheduler::core::{
    AbortReason, ClientId, Command, Event, JobEnd, JobId, JobState, ReleaseWhy, Reply, Submission,
    TaskId,
};

const U: ClientId = ClientId(100);
const J1: JobId = JobId(1);

/// Two streams (2 channels) of 4 lines of 100 bytes, 1 line per chunk.
const TWO: &str = "kernel = \"null\"\nchannels = 2\nlines = 4\nline_bytes = 100\nnode = \"c1\"\nchunk = { lines = 1 }\n";

impl T {
    /// Accepted, ready, preloaded; returns the first tasks handed out.
    fn running(&mut self, spec: &str) -> Vec<(TaskId, u64)> {
        self.ev(Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        });
        self.ev(Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        });
        let out = self.ev(Event::Submit {
            client: U,
            spec: Submission::Toml(spec.into()),
        });
        for c in out {
            if let Command::AllocStream {
                node, job, stream, ..
            } = c
            {
                self.ev(Event::StreamAllocated {
                    node,
                    job,
                    stream,
                    key: 9,
                });
            }
        }
        self.ev(Event::Ready { client: U, job: J1 });
        tasks(&self.ev(Event::PreloadDone { node: P1, job: J1 }))
    }
    /// Finishes every task until the job is delivered.
    fn deliver(&mut self, mut pending: Vec<(TaskId, u64)>) -> Vec<Command> {
        let mut all = Vec::new();
        while let Some((t, _)) = pending.pop() {
            let out = self.ev(Event::TaskDone { node: P1, task: t });
            pending.extend(tasks(&out));
            all.extend(out);
        }
        all
    }
    fn progress(&mut self, stream: u32, frontier: u64, read: u64) -> Vec<Command> {
        self.ev(Event::StreamProgress {
            node: C1,
            job: J1,
            stream,
            frontier,
            read,
        })
    }
}

#[test]
fn a_delivered_job_read_to_the_end_completes_by_itself_and_stays_visible() {
    let mut t = T::new();
    let first = t.running(TWO);
    t.now = 1000;
    let out = t.deliver(first);
    assert!(out.iter().any(|c| matches!(c, Command::Delivered { .. })));
    assert_eq!(t.s.job(J1).unwrap().state, JobState::Delivered);
    // Stream 0 read to its end: not yet; its consumer is told it is counted read (its reader
    // returns the end then), once.
    let read_to = |out: &[Command]| -> Vec<u32> {
        out.iter()
            .filter_map(|c| match c {
                Command::StreamRead { node, job, stream } if *node == C1 && *job == J1 => {
                    Some(*stream)
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(read_to(&t.progress(0, 400, 399)), Vec::<u32>::new());
    let out = t.progress(0, 400, 400);
    assert_eq!(ended(&out), None);
    assert_eq!(read_to(&out), vec![0]);
    assert_eq!(read_to(&t.progress(0, 400, 400)), Vec::<u32>::new());
    t.now = 3000;
    // Stream 1 too: confirmed before the release, completed, rings released (readers see no
    // abort: Done), no Done needed.
    let out = t.progress(1, 400, 400);
    assert_eq!(read_to(&out), vec![1]);
    let confirm = out
        .iter()
        .position(|c| matches!(c, Command::StreamRead { .. }));
    let release = out
        .iter()
        .position(|c| matches!(c, Command::Release { .. }));
    assert!(confirm < release, "{out:?}");
    assert_eq!(ended(&out), Some(JobEnd::Completed));
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Release {
            why: ReleaseWhy::Done,
            ..
        }
    )));
    assert!(t.s.job(J1).is_none());
    let e = t.s.ended_job(J1).expect("the ended job is remembered");
    assert_eq!(e.end, JobEnd::Completed);
    assert_eq!((e.total, e.delivered, e.read), (800, 800, 800));
    assert_eq!((e.started, e.ended), (Some(0), 3000));
    // Done afterwards is fine (idempotent); for a job that never was, an error.
    let out = t.ev(Event::Done { client: U, job: J1 });
    assert!(matches!(
        out.as_slice(),
        [Command::Reply {
            reply: Reply::Ok(J1),
            ..
        }]
    ));
    let out = t.ev(Event::Done {
        client: U,
        job: JobId(7),
    });
    assert!(matches!(
        out.as_slice(),
        [Command::Reply {
            reply: Reply::Error(_),
            ..
        }]
    ));
}

/// 2 streams of 40 lines of 100 bytes, 1 line per chunk: load-balance rings hold 4 chunks.
const LONG: &str = "kernel = \"null\"\nchannels = 2\nlines = 40\nline_bytes = 100\nnode = \"c1\"\nchunk = { lines = 1 }\n";

/// Runs LONG with stream 1's reader never reading: its ring (4 pieces) fills, and a chunk
/// that does not fit is not acked by the consumer (backpressure): the job waits.
fn stalled(extra: &str) -> (T, Vec<Command>) {
    let mut t = T::new();
    let spec = format!("{LONG}{extra}");
    let mut pending = t.running(&spec);
    pending.sort_by_key(|p| std::cmp::Reverse(p.1));
    let mut all = Vec::new();
    for _ in 0..60 {
        t.now += 500;
        match pending.last().copied() {
            Some((task, chunk)) if (chunk + 1) * 100 <= 400 => {
                pending.pop();
                let out = t.ev(Event::TaskDone { node: P1, task });
                pending.extend(tasks(&out));
                pending.sort_by_key(|p| std::cmp::Reverse(p.1));
                let f = (chunk + 1) * 100;
                all.extend(t.progress(0, f, f));
                all.extend(t.progress(1, f, 0));
                all.extend(out);
            }
            _ => all.extend(t.ev(Event::Tick)),
        }
        if ended(&all).is_some() {
            break;
        }
    }
    (t, all)
}

#[test]
fn a_job_waiting_on_a_full_ring_is_named_stalled_and_a_reader_timeout_aborts_it() {
    let (t, out) = stalled("");
    let warnings: Vec<&String> = out
        .iter()
        .filter_map(|c| match c {
            Command::JobWarning { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("stalled: stream 1 on \"c1\" has a full ring (0 of 4000 bytes read)")
            && warnings[0].contains("no reader has read from it yet"),
        "{}",
        warnings[0]
    );
    let st = t.s.job(J1).unwrap();
    assert_eq!(st.state, JobState::Running);
    assert_eq!(
        st.stall.as_deref(),
        warnings[0].strip_prefix("stalled: "),
        "status names the stall"
    );
    // With reader_timeout the job is aborted with that reason.
    let (_, out) = stalled("reader_timeout = \"8s\"\n");
    assert_eq!(
        ended(&out),
        Some(JobEnd::Aborted(AbortReason::ReaderTimeout {
            stream: 1,
            node: "c1".into(),
            secs: 8
        }))
    );
}
