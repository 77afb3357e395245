//! Every control message survives encode -> frame -> decode, with any byte split of the stream.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use proptest::prelude::*;
use spate_netlib::frame::{
    DEFAULT_MAX_FRAME, Encoder, FrameDecoder, FrameKind, HEADER_LEN, MAGIC, encode_message,
};
use spate_netlib::proto::*;

// ---- strategies ---------------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.é-]{0,12}"
}
fn text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.chars().take(40).collect())
}
fn path() -> impl Strategy<Value = PathBuf> {
    "(/[a-z0-9._-]{1,8}){1,4}".prop_map(PathBuf::from)
}
fn job() -> impl Strategy<Value = JobId> {
    any::<u64>().prop_map(JobId)
}
fn task() -> impl Strategy<Value = TaskId> {
    any::<u64>().prop_map(TaskId)
}
fn stream() -> impl Strategy<Value = StreamIndex> {
    any::<u32>().prop_map(StreamIndex)
}
fn chunk() -> impl Strategy<Value = ChunkIndex> {
    any::<u64>().prop_map(ChunkIndex)
}
fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}
fn endpoint() -> impl Strategy<Value = DataEndpoint> {
    prop_oneof![
        path().prop_map(|path| DataEndpoint::Unix { path }),
        (ip(), any::<u16>(), proptest::option::of(name())).prop_map(|(ip, port, interface)| {
            DataEndpoint::Tcp {
                addr: SocketAddr::new(ip, port),
                interface,
            }
        }),
    ]
}
fn roles() -> impl Strategy<Value = NodeRoles> {
    (any::<bool>(), any::<bool>()).prop_map(|(producer, consumer)| NodeRoles { producer, consumer })
}
fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        name(),
        any::<u128>(),
        roles(),
        any::<u32>(),
        prop::collection::vec(
            (name(), ip()).prop_map(|(name, addr)| Interface { name, addr }),
            0..3,
        ),
        (any::<u32>(), any::<u64>()).prop_map(|(cores, bytes_per_sec)| ComputeCapacity {
            cores,
            bytes_per_sec,
        }),
        any::<u64>(),
        prop::collection::vec(endpoint(), 0..3),
        proptest::option::of(path()),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                name,
                host,
                roles,
                cores,
                interfaces,
                compute,
                ring_budget,
                data_endpoints,
                handoff,
                nic_bytes_per_sec,
                ports,
            )| {
                NodeInfo {
                    name,
                    host: HostId(host),
                    roles,
                    cores,
                    interfaces,
                    compute,
                    ring_budget,
                    data_endpoints,
                    handoff_socket: handoff,
                    nic_bytes_per_sec,
                    ports,
                    hugepages: HugePages {
                        total: host as u64 % 4096,
                        free: host as u64 % 1024,
                        page_bytes: 2 << 20,
                    },
                }
            },
        )
}
fn outcome() -> impl Strategy<Value = JobOutcome> {
    prop_oneof![
        Just(JobOutcome::Completed),
        text().prop_map(|reason| JobOutcome::Aborted { reason }),
        Just(JobOutcome::Cancelled),
    ]
}
fn job_state() -> impl Strategy<Value = JobState> {
    prop_oneof![
        Just(JobState::Allocating),
        Just(JobState::WaitingReady),
        Just(JobState::Preloading),
        Just(JobState::Running),
        Just(JobState::Delivered),
        outcome().prop_map(JobState::Ended),
    ]
}
fn plan_info() -> impl Strategy<Value = PlanInfo> {
    (
        (name(), any::<u64>(), any::<u64>()),
        prop::collection::vec(name(), 0..3),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        prop::collection::vec(any::<u64>(), 0..3),
        prop::collection::vec(any::<u64>(), 0..3),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(
                (policy, chunk_bytes, chunk_lines),
                producers,
                (predicted_bps, predicted_latency_us, window_chunks),
                ring_bytes,
                prefill_bytes,
                max_feasible_bps,
                requested_bps,
                latency_bound_us,
            )| PlanInfo {
                policy,
                chunk_bytes,
                chunk_lines,
                producers,
                predicted_bps,
                predicted_latency_us,
                window_chunks,
                ring_bytes,
                prefill_bytes,
                max_feasible_bps,
                requested_bps,
                latency_bound_us,
            },
        )
}
fn node_capacity() -> impl Strategy<Value = NodeCapacity> {
    (
        prop::collection::vec(
            (name(), any::<u64>(), any::<u64>(), name(), any::<u64>()).prop_map(
                |(kernel, bytes_per_sec, overhead_us, source, samples)| ComputeEstimate {
                    kernel,
                    bytes_per_sec,
                    overhead_us,
                    source,
                    samples,
                },
            ),
            0..3,
        ),
        prop::collection::vec(
            (name(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(consumer, bytes_per_sec, overhead_us, samples)| LinkEstimate {
                    consumer,
                    bytes_per_sec,
                    overhead_us,
                    samples,
                },
            ),
            0..3,
        ),
        any::<u64>(),
    )
        .prop_map(|(compute, links, nic_bytes_per_sec)| NodeCapacity {
            compute,
            links,
            nic_bytes_per_sec,
        })
}
fn stream_status() -> impl Strategy<Value = StreamStatus> {
    (
        stream(),
        name(),
        any::<(u64, u64, u64, u64)>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(stream, node, (length, delivered, read, ring_bytes), starvations)| StreamStatus {
                stream,
                node,
                length,
                delivered,
                read,
                ring_bytes,
                starvations,
            },
        )
}
fn job_status() -> impl Strategy<Value = JobStatus> {
    (
        job(),
        name(),
        job_state(),
        any::<(u64, u64, u64)>(),
        proptest::option::of(plan_info()),
        proptest::option::of(text()),
        any::<u64>(),
        prop::collection::vec(stream_status(), 0..3),
        proptest::option::of(any::<u64>()),
        proptest::option::of(text()),
    )
        .prop_map(
            |(
                job,
                name,
                state,
                (delivered, read, total),
                plan,
                warning,
                duplicated,
                streams,
                running_ms,
                stall_reason,
            )| JobStatus {
                job,
                name,
                state,
                progress: Progress {
                    delivered,
                    read,
                    total,
                },
                plan: plan.map(Box::new),
                warning,
                duplicated,
                streams,
                running_ms,
                stall_reason,
            },
        )
}
fn ended_job() -> impl Strategy<Value = EndedJob> {
    (job(), name(), outcome(), any::<(u64, u64, u64, u64)>()).prop_map(
        |(job, name, outcome, (bytes, duration_ms, read, total))| EndedJob {
            job,
            name,
            outcome,
            bytes,
            duration_ms,
            read,
            total,
        },
    )
}
fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        name(),
        roles(),
        prop_oneof![
            Just(NodeState::Alive),
            Just(NodeState::Leaving),
            Just(NodeState::Lost)
        ],
        any::<u32>(),
        any::<u32>(),
        node_capacity(),
        any::<(u128, u32, u64, u64)>(),
    )
        .prop_map(
            |(
                name,
                roles,
                state,
                tasks_in_flight,
                streams,
                capacity,
                (host, cores, ring_budget, last_seen_ms),
            )| NodeStatus {
                name,
                roles,
                state,
                tasks_in_flight,
                streams,
                capacity,
                host: HostId(host),
                cores,
                interfaces: vec![],
                hugepages: HugePages {
                    total: u64::from(cores),
                    free: 0,
                    page_bytes: 2 << 20,
                },
                ring_budget,
                last_seen_ms,
            },
        )
}
fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        name().prop_map(|field| RefuseReason::InvalidSpec { field }),
        name().prop_map(|name| RefuseReason::InputUnavailable { name }),
        name().prop_map(|kernel| RefuseReason::UnknownKernel { kernel }),
        name().prop_map(|node| RefuseReason::ConsumerMissing { node }),
        Just(RefuseReason::NoProducers),
        Just(RefuseReason::InsufficientCapacity),
        (name(), stream()).prop_map(|(node, stream)| RefuseReason::AllocFailed { node, stream }),
        Just(RefuseReason::Busy),
        (name(), any::<u64>()).prop_map(|(constraint, max_feasible_bps)| {
            RefuseReason::Infeasible {
                constraint,
                max_feasible_bps,
            }
        }),
        name().prop_map(|name| RefuseReason::UnknownPolicy { name }),
    ]
}
/// Finite or infinite floats (NaN != NaN would break equality, not the codec).
fn float() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL
        | prop::num::f64::SUBNORMAL
        | prop::num::f64::ZERO
        | prop::num::f64::INFINITE
        | prop::num::f64::NEGATIVE
}

fn geometry() -> impl Strategy<Value = JobGeometry> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of((
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            proptest::option::of((any::<u32>(), any::<u32>())),
        )),
    )
        .prop_map(|(channels, lines, line_bytes, px)| JobGeometry {
            channels,
            lines,
            line_bytes,
            pixels: px.map(|(width, height, bits, dpi)| PixelGeometry {
                width,
                height,
                bits,
                dpi,
            }),
        })
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        name().prop_map(Value::Str),
        any::<i64>().prop_map(Value::Int),
        float().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            prop::collection::btree_map(name(), inner, 0..4).prop_map(Value::Table),
        ]
    })
}
fn input_spec() -> impl Strategy<Value = InputSpec> {
    (
        name(),
        prop_oneof![
            any::<u64>().prop_map(|size| InputSource::FileService { size }),
            path().prop_map(|path| InputSource::LocalPath { path }),
        ],
    )
        .prop_map(|(name, source)| InputSpec { name, source })
}
fn expel_target() -> impl Strategy<Value = ExpelTarget> {
    (
        stream(),
        name(),
        endpoint(),
        proptest::option::of(
            (proptest::option::of(name()), proptest::option::of(ip()))
                .prop_map(|(interface, addr)| SourceBinding { interface, addr }),
        ),
        any::<(u64, u64, u64)>(),
    )
        .prop_map(
            |(stream, consumer, endpoint, source, (chunk_offset, stream_offset, len))| {
                ExpelTarget {
                    stream,
                    consumer,
                    endpoint,
                    source,
                    chunk_offset,
                    stream_offset,
                    len,
                }
            },
        )
}

/// Every variant of `Message` (the exhaustive match in `variant_name` below keeps it complete).
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        node_info().prop_map(Message::Join),
        any::<u64>().prop_map(|heartbeat_ms| Message::Welcome { heartbeat_ms }),
        text().prop_map(|reason| Message::Quit { reason }),
        Just(Message::Heartbeat),
        text().prop_map(|reason| Message::Shutdown { reason }),
        (text(), prop::collection::vec(name(), 0..3))
            .prop_map(|(spec_toml, inputs)| Message::Submit { spec_toml, inputs }),
        (
            job(),
            prop::collection::vec(
                (stream(), name(), path(), any::<u128>(), any::<u64>()).prop_map(
                    |(stream, node, handoff, key, length)| StreamPlacement {
                        stream,
                        node,
                        handoff,
                        key: StreamKey(key),
                        length,
                    }
                ),
                0..4
            ),
            plan_info()
        )
            .prop_map(|(job, streams, plan)| Message::Accepted {
                job,
                streams,
                plan: Box::new(plan)
            }),
        (refuse_reason(), text())
            .prop_map(|(reason, message)| Message::Refused { reason, message }),
        job().prop_map(|job| Message::Ready { job }),
        job().prop_map(|job| Message::Done { job }),
        job().prop_map(|job| Message::Cancel { job }),
        job().prop_map(|job| Message::Ack { job }),
        proptest::option::of(job()).prop_map(|job| Message::Status { job }),
        (
            prop::collection::vec(job_status(), 0..3),
            prop::collection::vec(node_status(), 0..3),
            prop::collection::vec(ended_job(), 0..3)
        )
            .prop_map(|(jobs, nodes, ended)| Message::StatusReply { jobs, nodes, ended }),
        job().prop_map(|job| Message::Watch { job }),
        job_status().prop_map(Message::JobUpdate),
        (job(), outcome()).prop_map(|(job, outcome)| Message::JobEnded { job, outcome }),
        (
            job(),
            prop::collection::vec(any::<u32>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(job, chunk_latency_us, chunk_latency_hdr)| {
                Message::JobStats {
                    job,
                    chunk_latency_us,
                    chunk_latency_hdr,
                }
            }),
        (
            job(),
            stream(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            any::<u64>()
        )
            .prop_map(|(job, stream, capacity, total_len, rate_bps, prefill)| {
                Message::AllocStream {
                    job,
                    stream,
                    capacity,
                    total_len,
                    rate_bps,
                    prefill,
                }
            }),
        (
            job(),
            stream(),
            any::<u128>(),
            path(),
            prop_oneof![
                Just(RingBacking::HugeTlb),
                Just(RingBacking::TransparentHuge),
                Just(RingBacking::Plain)
            ]
        )
            .prop_map(|(job, stream, key, handoff, backing)| Message::Allocated {
                job,
                stream,
                key: StreamKey(key),
                handoff,
                backing
            }),
        (job(), stream(), text()).prop_map(|(job, stream, reason)| Message::AllocFailed {
            job,
            stream,
            reason
        }),
        (job(), text()).prop_map(|(job, reason)| Message::Release { job, reason }),
        (job(), stream()).prop_map(|(job, stream)| Message::StreamRead { job, stream }),
        (job(), stream(), any::<u64>(), any::<u64>()).prop_map(
            |(job, stream, frontier, read_pos)| Message::StreamProgress {
                job,
                stream,
                frontier,
                read_pos
            }
        ),
        (job(), stream()).prop_map(|(job, stream)| Message::ReaderAttached { job, stream }),
        (job(), stream()).prop_map(|(job, stream)| Message::ReaderGone { job, stream }),
        (
            job(),
            name(),
            value(),
            geometry(),
            prop::collection::vec(input_spec(), 0..3)
        )
            .prop_map(|(job, kernel, params, geometry, inputs)| Message::Preload {
                job,
                kernel,
                params,
                geometry,
                inputs
            }),
        job().prop_map(|job| Message::Preloaded { job }),
        (job(), text()).prop_map(|(job, reason)| Message::PreloadFailed { job, reason }),
        (job(), name(), any::<u64>(), any::<u64>()).prop_map(|(job, name, offset, len)| {
            Message::FetchInput {
                job,
                name,
                offset,
                len,
            }
        }),
        (
            job(),
            name(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300),
            any::<bool>()
        )
            .prop_map(|(job, name, offset, data, last)| Message::InputChunk {
                job,
                name,
                offset,
                data,
                last
            }),
        (job(), name(), text()).prop_map(|(job, name, reason)| Message::FetchFailed {
            job,
            name,
            reason
        }),
        (task(), job(), chunk(), any::<(u64, u64)>()).prop_map(
            |(task, job, chunk, (start, end))| {
                Message::Compute {
                    task,
                    job,
                    chunk,
                    lines: LineRange { start, end },
                }
            }
        ),
        (
            task(),
            job(),
            chunk(),
            prop::collection::vec(expel_target(), 0..3)
        )
            .prop_map(|(task, job, chunk, targets)| Message::Expel {
                task,
                job,
                chunk,
                targets
            }),
        (
            task(),
            job(),
            prop_oneof![Just(TaskKind::Compute), Just(TaskKind::Expel)],
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(
                (stream(), any::<u64>(), any::<u64>()).prop_map(|(stream, bytes, micros)| {
                    PieceTime {
                        stream,
                        bytes,
                        micros,
                    }
                }),
                0..4
            )
        )
            .prop_map(|(task, job, kind, bytes, micros, compute_micros, pieces)| {
                Message::TaskDone {
                    task,
                    job,
                    kind,
                    bytes,
                    micros,
                    compute_micros,
                    cpu_micros: micros / 3,
                    pieces,
                }
            }),
        (task(), job(), text(), any::<bool>()).prop_map(|(task, job, reason, retryable)| {
            Message::TaskFailed {
                task,
                job,
                reason,
                retryable,
            }
        }),
        job().prop_map(|job| Message::Unload { job }),
        (
            prop_oneof![
                Just(ErrorKind::UnexpectedMessage),
                Just(ErrorKind::UnknownJob),
                Just(ErrorKind::UnknownTask),
                Just(ErrorKind::UnknownStream),
                Just(ErrorKind::BadRequest),
                Just(ErrorKind::NotPermitted),
                Just(ErrorKind::Internal)
            ],
            text()
        )
            .prop_map(|(kind, message)| Message::Error { kind, message }),
        (text(), prop::collection::vec(name(), 0..3))
            .prop_map(|(spec_toml, inputs)| Message::Plan { spec_toml, inputs }),
        (
            any::<bool>(),
            proptest::option::of(plan_info()),
            proptest::option::of(refuse_reason()),
            text()
        )
            .prop_map(|(admitted, plan, reason, message)| Message::PlanReply {
                admitted,
                plan: plan.map(Box::new),
                reason,
                message
            }),
        (task(), job()).prop_map(|(task, job)| Message::CancelTask { task, job }),
        (job(), text()).prop_map(|(job, message)| Message::JobWarning { job, message }),
        (job(), prop::collection::vec(name(), 0..4))
            .prop_map(|(job, producers)| Message::JobProducers { job, producers }),
    ]
}

/// Exhaustive on purpose: adding a variant without a generator above fails to compile here,
/// reminding to extend `message()` (and the count in `generator_covers_every_variant`).
fn variant_name(m: &Message) -> &'static str {
    match m {
        Message::Join(_)
        | Message::Welcome { .. }
        | Message::Quit { .. }
        | Message::Heartbeat
        | Message::Shutdown { .. }
        | Message::Submit { .. }
        | Message::Accepted { .. }
        | Message::Refused { .. }
        | Message::Ready { .. }
        | Message::Done { .. }
        | Message::Cancel { .. }
        | Message::Ack { .. }
        | Message::Status { .. }
        | Message::StatusReply { .. }
        | Message::Watch { .. }
        | Message::JobUpdate(_)
        | Message::JobEnded { .. }
        | Message::JobStats { .. }
        | Message::AllocStream { .. }
        | Message::Allocated { .. }
        | Message::AllocFailed { .. }
        | Message::Release { .. }
        | Message::StreamRead { .. }
        | Message::StreamProgress { .. }
        | Message::ReaderAttached { .. }
        | Message::ReaderGone { .. }
        | Message::Preload { .. }
        | Message::Preloaded { .. }
        | Message::PreloadFailed { .. }
        | Message::FetchInput { .. }
        | Message::InputChunk { .. }
        | Message::FetchFailed { .. }
        | Message::Compute { .. }
        | Message::Expel { .. }
        | Message::TaskDone { .. }
        | Message::TaskFailed { .. }
        | Message::Unload { .. }
        | Message::Error { .. }
        | Message::Plan { .. }
        | Message::PlanReply { .. }
        | Message::CancelTask { .. }
        | Message::JobWarning { .. }
        | Message::JobProducers { .. } => m.name(),
    }
}
const VARIANTS: usize = 43;

/// Decode everything in `stream`, fed in pieces cut at `cuts` (sorted, deduplicated positions).
fn decode_split(stream: &[u8], cuts: &[usize]) -> Vec<Message> {
    let mut dec = FrameDecoder::default();
    let mut out = Vec::new();
    let mut prev = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let mut input = &stream[prev..cut];
        while let Some(m) = dec.decode_message(&mut input).expect("valid stream") {
            out.push(m);
        }
        assert!(input.is_empty());
        assert!(dec.buffer_capacity() <= DEFAULT_MAX_FRAME as usize);
        prev = cut;
    }
    assert!(dec.is_idle());
    dec.finish().expect("stream ends on a frame boundary");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn message_round_trips(msg in message()) {
        let bytes = encode_message(&msg).unwrap();
        prop_assert_eq!(&bytes[..4], &MAGIC);
        prop_assert_eq!(bytes.len(), HEADER_LEN + u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize);
        let mut input = &bytes[..];
        let got = FrameDecoder::default().decode_message(&mut input).unwrap();
        prop_assert_eq!(got.as_ref(), Some(&msg));
        prop_assert!(input.is_empty());
    }

    #[test]
    fn stream_of_messages_round_trips_under_any_split(
        msgs in prop::collection::vec(message(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let enc = Encoder::default();
        for m in &msgs {
            enc.encode_into(FrameKind::Message, m, &mut stream).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        prop_assert_eq!(decode_split(&stream, &cuts), msgs);
    }

    #[test]
    fn value_trees_round_trip(v in value()) {
        let bytes = postcard::to_stdvec(&v).unwrap();
        let back: Value = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back, v);
    }
}

#[test]
fn one_byte_at_a_time() {
    let msgs = vec![
        Message::Heartbeat,
        Message::Submit {
            spec_toml: "[job]\nname = \"a\"\n".into(),
            inputs: vec!["img".into()],
        },
        Message::Ready { job: JobId(7) },
    ];
    let mut stream = Vec::new();
    for m in &msgs {
        stream.extend(encode_message(m).unwrap());
    }
    let cuts: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(decode_split(&stream, &cuts), msgs);
}

#[test]
fn exact_bytes_of_a_heartbeat_and_a_ready() {
    // Version 5 (3: TaskDone, Accepted, AllocStream and status grew fields; 4: status figures,
    // hugepages at join, the latency histogram on the wire; 5: JobProducers appended).
    // Heartbeat is variant 3 of Message; Ready is variant 8 with JobId(300) as varint ac 02.
    assert_eq!(
        encode_message(&Message::Heartbeat).unwrap(),
        [b'S', b'P', b'A', b'T', 0, 5, 2, 0, 0, 0, 0, 1, 3]
    );
    assert_eq!(
        encode_message(&Message::Ready { job: JobId(300) }).unwrap(),
        [
            b'S', b'P', b'A', b'T', 0, 5, 2, 0, 0, 0, 0, 3, 8, 0xac, 0x02
        ]
    );
    assert_eq!(PROTOCOL_VERSION, 5);
}

#[test]
fn generator_covers_every_variant() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5000 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(variant_name(&m));
        if seen.len() == VARIANTS {
            break;
        }
    }
    assert_eq!(seen.len(), VARIANTS, "seen: {seen:?}");
}

#[test]
fn value_depth_is_limited_on_both_ends() {
    let nest = |levels: usize| {
        let mut v = Value::Int(1);
        for _ in 0..levels {
            v = Value::List(vec![v]);
        }
        v
    };
    // Flat encoding of `levels` nested one-element lists around Int(1).
    let flat = |levels: usize| {
        let mut raw = vec![(levels + 1) as u8];
        for _ in 0..levels {
            raw.extend([4, 1]); // FlatNode::List(1)
        }
        raw.extend([1, 2]); // FlatNode::Int(1): zigzag varint 2
        raw
    };
    assert_eq!(nest(MAX_VALUE_DEPTH).depth(), MAX_VALUE_DEPTH);
    assert_eq!(
        postcard::to_stdvec(&nest(MAX_VALUE_DEPTH)).unwrap(),
        flat(MAX_VALUE_DEPTH)
    );
    assert_eq!(
        postcard::from_bytes::<Value>(&flat(MAX_VALUE_DEPTH)).unwrap(),
        nest(MAX_VALUE_DEPTH)
    );
    assert!(postcard::to_stdvec(&nest(MAX_VALUE_DEPTH + 1)).is_err());
    assert!(postcard::from_bytes::<Value>(&flat(MAX_VALUE_DEPTH + 1)).is_err());
}

#[test]
fn malformed_value_trees_are_refused() {
    let cases: &[(&str, &[u8])] = &[
        ("list longer than its nodes", &[1, 4, 3]),
        ("key outside a table", &[1, 6, 1, b'k']),
        ("table entry without key", &[2, 5, 1, 1, 2]),
        ("nodes after the root", &[2, 1, 2, 1, 2]),
        (
            "duplicate key",
            &[5, 5, 2, 6, 1, b'k', 1, 2, 6, 1, b'k', 1, 2][..],
        ),
        ("empty", &[0]),
    ];
    for (what, raw) in cases {
        assert!(
            postcard::from_bytes::<Value>(raw).is_err(),
            "{what} accepted"
        );
    }
    // Sanity: a valid table {k = 1}.
    let table = postcard::from_bytes::<Value>(&[3, 5, 1, 6, 1, b'k', 1, 2]).unwrap();
    assert_eq!(
        table,
        Value::Table(BTreeMap::from([("k".to_string(), Value::Int(1))]))
    );
}
