//! Resuming a job after a scheduler restart (issue 12), in the pure core: a job an earlier run
//! admitted is handed back with `Event::Resume`; it waits for its consumers (by name, under
//! whatever connection ids they now have) to report its streams, then goes on computing only
//! the chunks not landed in order in every stream; a job waiting for Ready waits again; a
//! consumer that does not come back ends it, saying so.

mod common;

use common::*;
use spate_scheduler::core::{
    AbortReason, ClientId, Command, Event, JobEnd, JobId, JobState, NodeId, RESUME_GRACE_MS,
};
use spate_scheduler::spec::JobPlan;

const J7: JobId = JobId(7);
const U: ClientId = ClientId(100);

/// Two streams (2 channels) of 4 lines of 100 bytes; chunks of 1 line.
const TWO: &str = "kernel = \"null\"\nchannels = 2\nlines = 4\nline_bytes = 100\nnode = \"c1\"\n";

impl T {
    fn resume(&mut self, running: bool) -> Vec<Command> {
        let mut plan = JobPlan::parse(TWO).unwrap();
        plan.chunk_lines = Some(1);
        self.ev(Event::Resume {
            job: J7,
            plan: Box::new(plan),
            keys: vec![71, 72],
            running,
        })
    }
    fn progress(&mut self, node: NodeId, stream: u32, frontier: u64, read: u64) -> Vec<Command> {
        self.ev(Event::StreamProgress {
            node,
            job: J7,
            stream,
            frontier,
            read,
        })
    }
}

#[test]
fn a_resumed_job_computes_only_what_did_not_land_in_every_stream() {
    let mut t = T::new();
    assert!(t.resume(true).is_empty());
    assert_eq!(t.s.job(J7).unwrap().state, JobState::Resuming);
    assert!(t.s.next_job_id() > 7, "ids go on past the resumed job");
    // The consumer comes back under a new connection id; a producer too.
    t.ev(Event::NodeJoined {
        node: C2,
        info: info("c1", "h1", false, true),
    });
    t.ev(Event::NodeJoined {
        node: P1,
        info: info("p1", "h1", true, false),
    });
    // Stream 0 has 2 whole chunks in order, stream 1 one and a half: the job waits for both.
    assert!(tasks(&t.progress(C2, 0, 200, 50)).is_empty());
    assert_eq!(t.s.job(J7).unwrap().state, JobState::Resuming);
    let out = t.progress(C2, 1, 150, 0);
    // It goes on: its producers preload again (no Ready needed: it was running).
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Preload { node: P1, job: J7 })),
        "{out:?}"
    );
    let st = t.s.job(J7).unwrap();
    assert_eq!(st.state, JobState::Running);
    assert_eq!(st.delivered, 1, "chunk 0 landed in both streams");
    // (consumer, key, ring, frontier)
    let placed = |i: usize| (st.streams[i].0, st.streams[i].1, st.streams[i].3);
    assert_eq!(placed(0), (C2, Some(71), 200));
    assert_eq!(placed(1), (C2, Some(72), 150));
    // Only chunks 1, 2 and 3 are computed again.
    let mut pending = tasks(&t.ev(Event::PreloadDone { node: P1, job: J7 }));
    let mut computed = Vec::new();
    while let Some((task, chunk)) = pending.pop() {
        computed.push(chunk);
        let out = t.ev(Event::TaskDone { node: P1, task });
        pending.extend(tasks(&out));
    }
    computed.sort_unstable();
    assert_eq!(computed, vec![1, 2, 3]);
    assert_eq!(t.s.job(J7).unwrap().state, JobState::Delivered);
    // Read to the end: completed, as any job.
    t.progress(C2, 0, 400, 400);
    let out = t.progress(C2, 1, 400, 400);
    assert_eq!(ended(&out), Some(JobEnd::Completed));
    assert_eq!(t.s.ended_job(J7).unwrap().end, JobEnd::Completed);
}

#[test]
fn a_resumed_job_that_waited_for_ready_waits_again() {
    let mut t = T::new();
    t.resume(false);
    t.ev(Event::NodeJoined {
        node: P1,
        info: info("p1", "h1", true, false),
    });
    t.ev(Event::NodeJoined {
        node: C1,
        info: info("c1", "h1", false, true),
    });
    t.progress(C1, 0, 0, 0);
    let out = t.progress(C1, 1, 0, 0);
    assert!(tasks(&out).is_empty());
    assert_eq!(t.s.job(J7).unwrap().state, JobState::Accepted);
    let out = t.ev(Event::Ready { client: U, job: J7 });
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Preload { node: P1, job: J7 }))
    );
    let out = t.ev(Event::PreloadDone { node: P1, job: J7 });
    let mut chunks: Vec<u64> = tasks(&out).into_iter().map(|x| x.1).collect();
    chunks.sort_unstable();
    assert_eq!(chunks[0], 0, "nothing landed: from the start");
}

#[test]
fn a_stream_is_taken_only_from_the_consumer_the_plan_names() {
    let mut t = T::new();
    t.resume(true);
    t.ev(Event::NodeJoined {
        node: P1,
        info: info("p1", "h1", true, false),
    });
    // Another consumer reporting the job's streams does not place them.
    t.ev(Event::NodeJoined {
        node: C2,
        info: info("c2", "h2", false, true),
    });
    t.progress(C2, 0, 400, 400);
    t.progress(C2, 1, 400, 400);
    let st = t.s.job(J7).unwrap();
    assert_eq!(st.state, JobState::Resuming);
    assert_eq!(st.streams[0].1, None);
}

#[test]
fn a_consumer_that_does_not_come_back_ends_the_job_saying_which() {
    let mut t = T::new();
    t.resume(true);
    t.ev(Event::NodeJoined {
        node: P1,
        info: info("p1", "h1", true, false),
    });
    t.now = RESUME_GRACE_MS - 1;
    assert_eq!(ended(&t.ev(Event::Tick)), None);
    t.now = RESUME_GRACE_MS;
    let out = t.ev(Event::Tick);
    let Some(JobEnd::Aborted(AbortReason::NotResumed { reason })) = ended(&out) else {
        panic!("{out:?}");
    };
    assert_eq!(
        reason,
        "its consumer \"c1\" did not report its streams within 30 s"
    );
    assert!(t.s.job(J7).is_none());
    let e = t.s.ended_job(J7).unwrap();
    let JobEnd::Aborted(r) = &e.end else {
        panic!("{e:?}")
    };
    assert_eq!(
        r.to_string(),
        "the scheduler restarted and could not resume the job: its consumer \"c1\" did not \
         report its streams within 30 s"
    );
}
