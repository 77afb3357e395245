//! Focused scenarios for the decision core, with exact command sequences.

mod common;

use common::*;
use spate_scheduler::core::{
    AbortReason, ClientError, ClientId, Command, Event, JobEnd, JobId, JobState, Leave, NodeId,
    Refusal, ReleaseWhy, Reply, Scheduler, StreamPlacement, Submission, Target, TaskId,
};
use spate_scheduler::policy::{LoadBalance, PlanSummary, Route};
use spate_scheduler::spec::{Piece, SpecErrorKind};

const U: ClientId = ClientId(100);
const J1: JobId = JobId(1);
const J2: JobId = JobId(2);

fn sched() -> Scheduler {
    Scheduler::new(Box::new(LoadBalance::default()))
}

fn submit(s: &mut Scheduler, client: ClientId, text: &str) -> Vec<Command> {
    s.handle(
        0,
        Event::Submit {
            client,
            spec: Submission::Toml(text.to_string()),
        },
    )
}

fn ev(s: &mut Scheduler, e: Event) -> Vec<Command> {
    let out = s.handle(0, e);
    s.check_invariants().unwrap();
    out
}

/// Tasks in Compute commands, as (node, task, chunk index).
fn computes(out: &[Command]) -> Vec<(NodeId, TaskId, u64)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Compute {
                node, task, chunk, ..
            } => Some((*node, *task, chunk.index)),
            _ => None,
        })
        .collect()
}

const SMALL: &str =
    "kernel = \"null\"\nlines = 8\nline_bytes = 100\nnode = \"c1\"\nchunk = { lines = 2 }\n";

/// One producer and consumer on one host, job accepted and ready, preloaded.
fn running(s: &mut Scheduler, text: &str) -> Vec<Command> {
    ev(
        s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    ev(
        s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    let out = submit(s, U, text);
    for c in out {
        if let Command::AllocStream {
            node, job, stream, ..
        } = c
        {
            ev(
                s,
                Event::StreamAllocated {
                    node,
                    job,
                    stream,
                    key: 7,
                },
            );
        }
    }
    ev(s, Event::Ready { client: U, job: J1 });
    ev(s, Event::PreloadDone { node: P1, job: J1 })
}

#[test]
fn happy_path_exact_sequence() {
    let mut s = sched();
    assert_eq!(
        ev(
            &mut s,
            Event::NodeJoined {
                node: P1,
                info: info("p1", "h1", true, false)
            }
        ),
        vec![]
    );
    assert_eq!(
        ev(
            &mut s,
            Event::NodeJoined {
                node: C1,
                info: info("c1", "h1", false, true)
            }
        ),
        vec![]
    );
    assert_eq!(
        submit(&mut s, U, SMALL),
        vec![Command::AllocStream {
            node: C1,
            job: J1,
            stream: 0,
            len: 800,
            ring: 800
        }]
    );
    assert_eq!(s.job(J1).unwrap().state, JobState::Allocating);
    assert_eq!(
        ev(
            &mut s,
            Event::StreamAllocated {
                node: C1,
                job: J1,
                stream: 0,
                key: 7
            }
        ),
        vec![Command::Reply {
            client: U,
            reply: Reply::Accepted {
                job: J1,
                streams: vec![StreamPlacement {
                    stream: 0,
                    node: C1,
                    node_name: "c1".into(),
                    key: 7,
                    len: 800,
                    ring: 800
                }],
                plan: PlanSummary {
                    chunk_bytes: 200,
                    chunk_lines: 2,
                    rings: vec![800],
                    prefill: vec![0],
                    ..PlanSummary::default()
                }
            }
        }]
    );
    assert_eq!(
        ev(&mut s, Event::Ready { client: U, job: J1 }),
        vec![
            Command::Reply {
                client: U,
                reply: Reply::Ok(J1)
            },
            Command::Preload { node: P1, job: J1 }
        ]
    );
    let out = ev(&mut s, Event::PreloadDone { node: P1, job: J1 });
    assert_eq!(out.len(), 3);
    let Command::Compute {
        node,
        task,
        job,
        chunk,
        targets,
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!((*node, *task, *job), (P1, TaskId(1), J1));
    assert_eq!(chunk.index, 0);
    assert_eq!(chunk.lines, 0..2);
    let piece = Piece {
        stream: 0,
        channel: 0,
        offset: 0,
        len: 200,
    };
    assert_eq!(chunk.pieces, vec![piece]);
    assert_eq!(
        targets,
        &vec![Target {
            piece,
            node: C1,
            route: Route::Local
        }]
    );
    assert_eq!(
        computes(&out),
        vec![(P1, TaskId(1), 0), (P1, TaskId(2), 1), (P1, TaskId(3), 2)]
    );
    assert_eq!(
        computes(&ev(
            &mut s,
            Event::TaskDone {
                node: P1,
                task: TaskId(1)
            }
        )),
        vec![(P1, TaskId(4), 3)]
    );
    assert_eq!(
        ev(
            &mut s,
            Event::TaskDone {
                node: P1,
                task: TaskId(3)
            }
        ),
        vec![]
    );
    assert_eq!(
        ev(
            &mut s,
            Event::TaskDone {
                node: P1,
                task: TaskId(2)
            }
        ),
        vec![]
    );
    assert_eq!(
        ev(
            &mut s,
            Event::TaskDone {
                node: P1,
                task: TaskId(4)
            }
        ),
        vec![
            Command::Unload { node: P1, job: J1 },
            Command::Delivered { client: U, job: J1 }
        ]
    );
    assert_eq!(s.job(J1).unwrap().state, JobState::Delivered);
    assert_eq!(
        ev(&mut s, Event::Done { client: U, job: J1 }),
        vec![
            Command::Reply {
                client: U,
                reply: Reply::Ok(J1)
            },
            Command::Release {
                node: C1,
                job: J1,
                streams: vec![0],
                why: ReleaseWhy::Done
            },
            Command::JobEnded {
                client: U,
                job: J1,
                end: JobEnd::Completed
            }
        ]
    );
    assert_eq!(s.jobs(), vec![]);
    // The job is gone now.
    assert_eq!(
        ev(&mut s, Event::Ready { client: U, job: J1 }),
        vec![Command::Reply {
            client: U,
            reply: Reply::Error(ClientError::UnknownJob(J1))
        }]
    );
}

#[test]
fn refusals() {
    let mut s = sched();
    // No producers.
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    assert_eq!(
        submit(&mut s, U, SMALL),
        vec![Command::Reply {
            client: U,
            reply: Reply::Refused(Refusal::NoProducers)
        }]
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    // Missing output node.
    assert_eq!(
        submit(&mut s, U, &SMALL.replace("\"c1\"", "\"c9\"")),
        vec![Command::Reply {
            client: U,
            reply: Reply::Refused(Refusal::MissingOutputNode {
                stream: 0,
                node: "c9".into()
            })
        }]
    );
    // A producer named as output.
    assert_eq!(
        submit(&mut s, U, &SMALL.replace("\"c1\"", "\"p1\"")),
        vec![Command::Reply {
            client: U,
            reply: Reply::Refused(Refusal::NotAConsumer {
                stream: 0,
                node: "p1".into()
            })
        }]
    );
    // Invalid spec, naming the field.
    let out = submit(&mut s, U, &format!("{SMALL}colour = 3\n"));
    let [
        Command::Reply {
            reply: Reply::Refused(Refusal::InvalidSpec(e)),
            ..
        },
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(e.field, "colour");
    assert!(matches!(e.kind, SpecErrorKind::UnknownField { .. }));
    assert_eq!(s.jobs(), vec![]);
    // Duplicate node name.
    assert!(matches!(
        &ev(
            &mut s,
            Event::NodeJoined {
                node: C2,
                info: info("c1", "h2", false, true)
            }
        )[..],
        [Command::RefuseNode { node: C2, .. }]
    ));
}

#[test]
fn alloc_failure_refuses_and_releases_the_others() {
    let mut s = sched();
    ev(
        &mut s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C2,
            info: info("c2", "h2", false, true),
        },
    );
    let text = "kernel = \"null\"\nlines = 8\nline_bytes = 100\nchannels = 3\n[[stream]]\nnode = \"c1\"\n[[stream]]\nnode = \"c2\"\n[[stream]]\nnode = \"c1\"\n";
    assert_eq!(submit(&mut s, U, text).len(), 3);
    ev(
        &mut s,
        Event::StreamAllocated {
            node: C1,
            job: J1,
            stream: 0,
            key: 1,
        },
    );
    // From the wrong node: ignored.
    assert_eq!(
        ev(
            &mut s,
            Event::AllocFailed {
                node: C1,
                job: J1,
                stream: 1,
                reason: "x".into()
            }
        ),
        vec![]
    );
    assert_eq!(
        ev(
            &mut s,
            Event::AllocFailed {
                node: C2,
                job: J1,
                stream: 1,
                reason: "no hugepages".into()
            }
        ),
        vec![
            Command::Release {
                node: C1,
                job: J1,
                streams: vec![0, 2],
                why: ReleaseWhy::Refused
            },
            Command::Reply {
                client: U,
                reply: Reply::Refused(Refusal::AllocFailed {
                    stream: 1,
                    node: "c2".into(),
                    reason: "no hugepages".into()
                })
            }
        ]
    );
    assert_eq!(s.jobs(), vec![]);
}

#[test]
fn alloc_timeout_refuses() {
    let mut s = sched();
    ev(
        &mut s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    s.handle(
        1000,
        Event::Submit {
            client: U,
            spec: Submission::Toml(SMALL.into()),
        },
    );
    assert_eq!(s.handle(10_999, Event::Tick), vec![]);
    assert_eq!(
        s.handle(11_000, Event::Tick),
        vec![
            Command::Release {
                node: C1,
                job: J1,
                streams: vec![0],
                why: ReleaseWhy::Refused
            },
            Command::Reply {
                client: U,
                reply: Reply::Refused(Refusal::AllocTimeout { node: "c1".into() })
            }
        ]
    );
}

#[test]
fn at_least_two_tasks_queued_per_producer() {
    let mut s = sched();
    for (i, p) in [P1, P2, P3].into_iter().enumerate() {
        ev(
            &mut s,
            Event::NodeJoined {
                node: p,
                info: info(&format!("p{i}"), "h1", true, false),
            },
        );
    }
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    let text =
        "kernel = \"null\"\nlines = 100\nline_bytes = 100\nnode = \"c1\"\nchunk = { lines = 1 }\n";
    submit(&mut s, U, text);
    ev(
        &mut s,
        Event::StreamAllocated {
            node: C1,
            job: J1,
            stream: 0,
            key: 1,
        },
    );
    let out = ev(&mut s, Event::Ready { client: U, job: J1 });
    assert_eq!(
        out.iter()
            .filter(|c| matches!(c, Command::Preload { .. }))
            .count(),
        3
    );
    let mut all = vec![];
    for p in [P1, P2, P3] {
        all.extend(computes(&ev(
            &mut s,
            Event::PreloadDone { node: p, job: J1 },
        )));
    }
    for p in [P1, P2, P3] {
        assert_eq!(s.tasks_of(p).len(), 3, "{p:?}");
    }
    // Chunks handed out lowest first.
    let mut chunks: Vec<u64> = all.iter().map(|x| x.2).collect();
    chunks.sort();
    assert_eq!(chunks, (0..9).collect::<Vec<_>>());
    // Finishing one task refills that producer at once.
    let (p, t, _) = all[4];
    assert_eq!(
        computes(&ev(&mut s, Event::TaskDone { node: p, task: t })),
        vec![(p, TaskId(10), 9)]
    );
}

#[test]
fn ring_window_bounds_tasks_in_flight() {
    let mut s = sched();
    // Admitted with one producer: ring = 4 chunks.
    let text =
        "kernel = \"null\"\nlines = 100\nline_bytes = 100\nnode = \"c1\"\nchunk = { lines = 1 }\n";
    ev(
        &mut s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    let out = submit(&mut s, U, text);
    assert!(matches!(out[..], [Command::AllocStream { ring: 400, .. }]));
    ev(
        &mut s,
        Event::StreamAllocated {
            node: C1,
            job: J1,
            stream: 0,
            key: 1,
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: P2,
            info: info("p2", "h1", true, false),
        },
    );
    ev(&mut s, Event::Ready { client: U, job: J1 });
    let mut all = computes(&ev(&mut s, Event::PreloadDone { node: P1, job: J1 }));
    all.extend(computes(&ev(
        &mut s,
        Event::PreloadDone { node: P2, job: J1 },
    )));
    // Only chunks 0..4 fit the ring beyond the delivered prefix.
    assert_eq!(
        all.iter().map(|x| x.2).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(!s.has_assignable(J1));
    // Chunk 1 done: the prefix has not moved, nothing new.
    let t1 = all.iter().find(|x| x.2 == 1).unwrap();
    assert_eq!(
        ev(
            &mut s,
            Event::TaskDone {
                node: t1.0,
                task: t1.1
            }
        ),
        vec![]
    );
    // Chunk 0 done: prefix at 2, chunks 4 and 5 may go.
    let t0 = all.iter().find(|x| x.2 == 0).unwrap();
    let next: Vec<u64> = computes(&ev(
        &mut s,
        Event::TaskDone {
            node: t0.0,
            task: t0.1,
        },
    ))
    .iter()
    .map(|x| x.2)
    .collect();
    assert_eq!(next, vec![4, 5]);
}

#[test]
fn producer_crash_mid_job_reassigns() {
    let mut s = sched();
    ev(
        &mut s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: P2,
            info: info("p2", "h1", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    let text =
        "kernel = \"null\"\nlines = 20\nline_bytes = 100\nnode = \"c1\"\nchunk = { lines = 2 }\n";
    submit(&mut s, U, text);
    ev(
        &mut s,
        Event::StreamAllocated {
            node: C1,
            job: J1,
            stream: 0,
            key: 1,
        },
    );
    ev(&mut s, Event::Ready { client: U, job: J1 });
    let a = computes(&ev(&mut s, Event::PreloadDone { node: P1, job: J1 }));
    let b = computes(&ev(&mut s, Event::PreloadDone { node: P2, job: J1 }));
    assert_eq!(a.iter().map(|x| x.2).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(b.iter().map(|x| x.2).collect::<Vec<_>>(), vec![3, 4, 5]);
    // P2 finishes chunk 3, gets 6, then crashes.
    let c = computes(&ev(
        &mut s,
        Event::TaskDone {
            node: P2,
            task: b[0].1,
        },
    ));
    assert_eq!(c.iter().map(|x| x.2).collect::<Vec<_>>(), vec![6]);
    assert_eq!(
        ev(
            &mut s,
            Event::NodeLeft {
                node: P2,
                how: Leave::Crash
            }
        ),
        vec![]
    );
    assert_eq!(s.tasks_of(P2), vec![]);
    // A stale report from the dead producer is ignored.
    assert_eq!(
        ev(
            &mut s,
            Event::TaskDone {
                node: P2,
                task: b[1].1
            }
        ),
        vec![]
    );
    // P1 picks up the lost chunks 4, 5, 6 (lowest first) as its slots free up.
    let mut redo = vec![];
    for t in &a {
        redo.extend(computes(&ev(
            &mut s,
            Event::TaskDone {
                node: P1,
                task: t.1,
            },
        )));
    }
    assert_eq!(
        redo.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>(),
        vec![(P1, 4), (P1, 5), (P1, 6)]
    );
    let mut pending = redo;
    let mut delivered = false;
    while let Some((n, t, _)) = pending.pop() {
        let out = ev(&mut s, Event::TaskDone { node: n, task: t });
        delivered |= out.contains(&Command::Delivered { client: U, job: J1 });
        pending.extend(computes(&out));
    }
    assert!(delivered);
    assert_eq!(s.job(J1).unwrap().delivered, 10);
}

#[test]
fn last_producer_leaving_aborts() {
    let mut s = sched();
    running(&mut s, SMALL);
    assert_eq!(
        ev(
            &mut s,
            Event::NodeLeft {
                node: P1,
                how: Leave::Quit
            }
        ),
        vec![
            Command::Release {
                node: C1,
                job: J1,
                streams: vec![0],
                why: ReleaseWhy::Aborted(AbortReason::NoProducers { last: "p1".into() })
            },
            Command::JobEnded {
                client: U,
                job: J1,
                end: JobEnd::Aborted(AbortReason::NoProducers { last: "p1".into() })
            }
        ]
    );
}

#[test]
fn consumer_crash_aborts_naming_the_node() {
    let mut s = sched();
    running(&mut s, SMALL);
    let reason = AbortReason::ConsumerLost {
        node: "c1".into(),
        how: Leave::Crash,
    };
    assert_eq!(reason.to_string(), "output node \"c1\" crashed");
    assert_eq!(
        ev(
            &mut s,
            Event::NodeLeft {
                node: C1,
                how: Leave::Crash
            }
        ),
        vec![
            Command::Unload { node: P1, job: J1 },
            Command::JobEnded {
                client: U,
                job: J1,
                end: JobEnd::Aborted(reason)
            }
        ]
    );
    assert_eq!(s.tasks_of(P1), vec![]);
}

#[test]
fn producer_joining_late_is_adopted() {
    let mut s = sched();
    running(
        &mut s,
        "kernel = \"null\"\nlines = 40\nline_bytes = 100\nnode = \"c1\"\nchunk = { lines = 1 }\n",
    );
    assert_eq!(
        ev(
            &mut s,
            Event::NodeJoined {
                node: P2,
                info: info("p2", "h2", true, false)
            }
        ),
        vec![Command::Preload { node: P2, job: J1 }]
    );
    let out = ev(&mut s, Event::PreloadDone { node: P2, job: J1 });
    // The ring (4 chunks, sized for one producer) has room for one more chunk beyond P1's 3.
    assert_eq!(computes(&out).len(), 1);
    // P2 is on another host: it goes over the network.
    let Command::Compute { targets, .. } = &out[0] else {
        panic!()
    };
    assert_eq!(targets[0].route, Route::Remote(None));
}

#[test]
fn preload_failure_everywhere_aborts() {
    let mut s = sched();
    ev(
        &mut s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    submit(&mut s, U, SMALL);
    ev(
        &mut s,
        Event::StreamAllocated {
            node: C1,
            job: J1,
            stream: 0,
            key: 1,
        },
    );
    ev(&mut s, Event::Ready { client: U, job: J1 });
    let out = ev(
        &mut s,
        Event::PreloadFailed {
            node: P1,
            job: J1,
            reason: "no such file".into(),
        },
    );
    let reason = AbortReason::PreloadFailed {
        node: "p1".into(),
        reason: "no such file".into(),
    };
    assert_eq!(
        out,
        vec![
            Command::Unload { node: P1, job: J1 },
            Command::Release {
                node: C1,
                job: J1,
                streams: vec![0],
                why: ReleaseWhy::Aborted(reason.clone())
            },
            Command::JobEnded {
                client: U,
                job: J1,
                end: JobEnd::Aborted(reason)
            }
        ]
    );
}

#[test]
fn failing_chunk_is_retried_then_aborts() {
    let mut s = sched();
    let out = running(&mut s, SMALL);
    let (_, t, k) = computes(&out)[0];
    assert_eq!(k, 0);
    // Fail chunk 0: it is redone (lowest first) by the next free slot.
    let out = ev(
        &mut s,
        Event::TaskFailed {
            node: P1,
            task: t,
            reason: "boom".into(),
        },
    );
    let (_, t, k) = computes(&out)[0];
    assert_eq!(k, 0);
    let out = ev(
        &mut s,
        Event::TaskFailed {
            node: P1,
            task: t,
            reason: "boom".into(),
        },
    );
    let (_, t, k) = computes(&out)[0];
    assert_eq!(k, 0);
    let out = ev(
        &mut s,
        Event::TaskFailed {
            node: P1,
            task: t,
            reason: "boom 3".into(),
        },
    );
    assert_eq!(
        out.last(),
        Some(&Command::JobEnded {
            client: U,
            job: J1,
            end: JobEnd::Aborted(AbortReason::ChunkFailed {
                chunk: 0,
                attempts: 3,
                reason: "boom 3".into()
            })
        })
    );
    assert_eq!(s.tasks_of(P1), vec![]);
}

#[test]
fn reader_gone_aborts_or_keeps() {
    let mut s = sched();
    running(&mut s, SMALL);
    let out = ev(
        &mut s,
        Event::ReaderGone {
            node: C1,
            job: J1,
            stream: 0,
        },
    );
    assert!(matches!(
        out.last(),
        Some(Command::JobEnded {
            end: JobEnd::Aborted(AbortReason::ReaderGone { stream: 0, .. }),
            ..
        })
    ));
    let mut s = sched();
    running(
        &mut s,
        &format!("{SMALL}on_reader_death = \"keep\"\n").replace("chunk = { lines = 2 }\n", ""),
    );
    assert_eq!(
        ev(
            &mut s,
            Event::ReaderGone {
                node: C1,
                job: J1,
                stream: 0
            }
        ),
        vec![]
    );
    assert_eq!(s.job(J1).unwrap().state, JobState::Running);
}

#[test]
fn cancel_and_bad_requests() {
    let mut s = sched();
    running(&mut s, SMALL);
    assert_eq!(
        ev(&mut s, Event::Done { client: U, job: J1 }),
        vec![Command::Reply {
            client: U,
            reply: Reply::Error(ClientError::BadState {
                job: J1,
                state: JobState::Running,
                wanted: "Done is for a delivered job; use Cancel to stop it early"
            })
        }]
    );
    assert_eq!(
        ev(
            &mut s,
            Event::Cancel {
                client: ClientId(5),
                job: J1
            }
        ),
        vec![
            Command::Reply {
                client: ClientId(5),
                reply: Reply::Ok(J1)
            },
            Command::Unload { node: P1, job: J1 },
            Command::Release {
                node: C1,
                job: J1,
                streams: vec![0],
                why: ReleaseWhy::Cancelled
            },
            Command::JobEnded {
                client: U,
                job: J1,
                end: JobEnd::Cancelled
            }
        ]
    );
    assert_eq!(s.tasks_of(P1), vec![]);
}

#[test]
fn two_jobs_at_once_share_producers() {
    let mut s = sched();
    ev(
        &mut s,
        Event::NodeJoined {
            node: P1,
            info: info("p1", "h1", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: P2,
            info: info("p2", "h2", true, false),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C1,
            info: info("c1", "h1", false, true),
        },
    );
    ev(
        &mut s,
        Event::NodeJoined {
            node: C2,
            info: info("c2", "h2", false, true),
        },
    );
    let u2 = ClientId(200);
    submit(
        &mut s,
        U,
        "kernel = \"null\"\nlines = 12\nline_bytes = 10\nnode = \"c1\"\nchunk = { lines = 1 }\n",
    );
    submit(
        &mut s,
        u2,
        "kernel = \"pattern\"\nlines = 12\nline_bytes = 10\nnode = \"c2\"\nchunk = { lines = 1 }\n",
    );
    ev(
        &mut s,
        Event::StreamAllocated {
            node: C1,
            job: J1,
            stream: 0,
            key: 1,
        },
    );
    ev(
        &mut s,
        Event::StreamAllocated {
            node: C2,
            job: J2,
            stream: 0,
            key: 2,
        },
    );
    ev(&mut s, Event::Ready { client: U, job: J1 });
    ev(
        &mut s,
        Event::Ready {
            client: u2,
            job: J2,
        },
    );
    let mut pending = vec![];
    for p in [P1, P2] {
        for j in [J1, J2] {
            pending.extend(computes(&ev(
                &mut s,
                Event::PreloadDone { node: p, job: j },
            )));
        }
    }
    // P1 preloaded J1 first and took its tasks; P2 preloaded J1 before J2, so it serves J1
    // too (locality is a tie-breaker among ready jobs: see the policy tests).
    assert_eq!(pending.len(), 6);
    let mut delivered = vec![];
    let mut i = 0;
    while !pending.is_empty() {
        // Finish tasks in a scrambled but deterministic order.
        i = (i + 5) % pending.len();
        let (n, t, _) = pending.remove(i);
        let out = ev(&mut s, Event::TaskDone { node: n, task: t });
        for c in &out {
            if let Command::Delivered { client, job } = c {
                delivered.push((*client, *job));
            }
        }
        pending.extend(computes(&out));
        i %= pending.len().max(1);
    }
    delivered.sort();
    assert_eq!(delivered, vec![(U, J1), (u2, J2)]);
}
