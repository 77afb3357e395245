//! The server's pure translations: routes to consumer endpoints, compute+expel pairs, refusal
//! reasons, kernel parameters, and the user-side secret lookup.

use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{
    self, ComputeCapacity, DataEndpoint, ExpelTarget, HostId, Interface, LineRange, Message,
    NodeInfo, NodeRoles, RefuseReason, SourceBinding, StreamIndex, Value,
};
use spate_scheduler::core::{self, JobId, Refusal, TaskId};
use spate_scheduler::policy::Route;
use spate_scheduler::server::user::{SecretOrigin, secret_path_for, server_secret};
use spate_scheduler::server::{compute_pair, core_info, refuse_reason, route, table_to_value};
use spate_scheduler::spec::JobPlan;

fn node(name: &str, host: u128, eps: Vec<DataEndpoint>, ifs: Vec<Interface>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        host: HostId(host),
        roles: NodeRoles {
            producer: eps.is_empty(),
            consumer: !eps.is_empty(),
        },
        cores: 4,
        interfaces: ifs,
        compute: ComputeCapacity::default(),
        ring_budget: 1 << 30,
        data_endpoints: eps,
        handoff_socket: None,
        nic_bytes_per_sec: 0,
        ports: 0,
    }
}

fn unix(p: &str) -> DataEndpoint {
    DataEndpoint::Unix { path: p.into() }
}

fn tcp(a: &str, i: Option<&str>) -> DataEndpoint {
    DataEndpoint::Tcp {
        addr: a.parse().unwrap(),
        interface: i.map(str::to_string),
    }
}

#[test]
fn routes_pick_the_consumer_endpoint_and_source() {
    let c = node(
        "c1",
        1,
        vec![
            unix("/run/c1.data"),
            tcp("10.0.0.1:7100", Some("eth0")),
            tcp("10.1.0.1:7100", Some("eth1")),
        ],
        vec![],
    );
    let local = node("p-local", 1, vec![], vec![]);
    let remote = node(
        "p-remote",
        2,
        vec![],
        vec![Interface {
            name: "eth1".into(),
            addr: "10.1.0.9".parse().unwrap(),
        }],
    );
    assert_eq!(
        route(&local, &c, &Route::Local).unwrap(),
        (unix("/run/c1.data"), None)
    );
    // The policy's interface names the consumer address; the producer's interface of the same
    // name gives the source address.
    let eth1 = core_info(&c).interfaces[1].clone();
    assert_eq!(eth1.name, "eth1");
    assert_eq!(eth1.addr, "10.1.0.1:7100");
    assert_eq!(
        route(&remote, &c, &Route::Remote(Some(eth1))).unwrap(),
        (
            tcp("10.1.0.1:7100", Some("eth1")),
            Some(SourceBinding {
                interface: None,
                addr: Some("10.1.0.9".parse().unwrap())
            })
        )
    );
    assert_eq!(
        route(&remote, &c, &Route::Remote(None)).unwrap(),
        (tcp("10.0.0.1:7100", Some("eth0")), None)
    );
    // A consumer with only a UNIX endpoint cannot be reached from another host.
    let c_unix = node("c2", 1, vec![unix("/run/c2.data")], vec![]);
    assert_eq!(
        route(&remote, &c_unix, &Route::Remote(None)).unwrap_err(),
        "consumer \"c2\" announced no data endpoint that producer \"p-remote\" can reach (it is \
         on another host and has no TCP data endpoint)"
    );
}

#[test]
fn core_info_maps_hosts_roles_and_capacity() {
    let c = node("c1", 0xab, vec![tcp("10.0.0.1:7100", None)], vec![]);
    let i = core_info(&c);
    assert_eq!(i.host, format!("{:032x}", 0xab));
    assert!(i.roles.consumer && !i.roles.producer);
    assert_eq!(i.capacity, 1 << 30);
    assert_eq!(i.cores, 4);
    assert_eq!(
        i.interfaces,
        vec![core::Interface {
            name: "10.0.0.1:7100".into(),
            addr: "10.0.0.1:7100".into()
        }]
    );
    let p = core_info(&node("p", 1, vec![], vec![]));
    assert_eq!(p.capacity, 0);
}

#[test]
fn a_compute_pair_places_pieces_channel_after_channel() {
    let plan = JobPlan::parse(
        "kernel = \"pattern\"\nchannels = 3\nlines = 100\nline_bytes = 10\nnode = \"c\"\n\
         split = { lines = 2 }\n",
    )
    .unwrap();
    let layout = plan.layout(20);
    // Chunk 3 = part 1, rank 0: lines 50..70 of every channel.
    let chunk = layout.chunk(3).unwrap();
    let targets: Vec<ExpelTarget> = chunk
        .pieces
        .iter()
        .scan(0, |at, p| {
            let t = ExpelTarget {
                stream: StreamIndex(p.stream),
                consumer: "c".into(),
                endpoint: unix("/x"),
                source: None,
                chunk_offset: *at,
                stream_offset: p.offset,
                len: p.len,
            };
            *at += p.len;
            Some(t)
        })
        .collect();
    let (c, e) = compute_pair(TaskId(9), JobId(2), &chunk, targets);
    assert_eq!(
        c,
        Message::Compute {
            task: proto::TaskId(9),
            job: proto::JobId(2),
            chunk: proto::ChunkIndex(3),
            lines: LineRange { start: 50, end: 70 },
        }
    );
    match e {
        Message::Expel {
            task,
            chunk,
            targets,
            ..
        } => {
            assert_eq!((task, chunk), (proto::TaskId(9), proto::ChunkIndex(3)));
            let got: Vec<(u32, u64, u64, u64)> = targets
                .iter()
                .map(|t| (t.stream.0, t.chunk_offset, t.stream_offset, t.len))
                .collect();
            // Streams channel-major: channel c, part 1 = stream 2c + 1.
            assert_eq!(
                got,
                vec![(1, 0, 0, 200), (3, 200, 0, 200), (5, 400, 0, 200)]
            );
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn refusals_map_to_structured_reasons() {
    let e = JobPlan::parse("kernel = \"x\"\nsize = \"1MiB\"\nnode = \"n\"").unwrap_err();
    assert_eq!(
        refuse_reason(&Refusal::InvalidSpec(e)),
        RefuseReason::UnknownKernel { kernel: "x".into() }
    );
    let e = JobPlan::parse("kernel = \"null\"\nsize = \"1MiB\"").unwrap_err();
    let field = e.field.clone();
    assert_eq!(
        refuse_reason(&Refusal::InvalidSpec(e)),
        RefuseReason::InvalidSpec { field }
    );
    assert_eq!(
        refuse_reason(&Refusal::NotAConsumer {
            stream: 1,
            node: "p".into()
        }),
        RefuseReason::ConsumerMissing { node: "p".into() }
    );
    assert_eq!(
        refuse_reason(&Refusal::Capacity {
            node: "c".into(),
            need: 2,
            free: 1
        }),
        RefuseReason::InsufficientCapacity
    );
    assert_eq!(
        refuse_reason(&Refusal::AllocFailed {
            stream: 3,
            node: "c".into(),
            reason: "no memory".into()
        }),
        RefuseReason::AllocFailed {
            node: "c".into(),
            stream: StreamIndex(3)
        }
    );
}

#[test]
fn kernel_parameters_become_values() {
    let t: toml::Table = toml::from_str(
        "seed = 7\nink_limit = 2.8\nname = \"x\"\non = true\nlist = [1, 2]\n[curve]\nc = 0.5\n\
         when = 1979-05-27T07:32:00Z\n",
    )
    .unwrap();
    let v = table_to_value(&t);
    assert_eq!(v.get("seed"), Some(&Value::Int(7)));
    assert_eq!(v.get("ink_limit"), Some(&Value::Float(2.8)));
    assert_eq!(v.get("name"), Some(&Value::Str("x".into())));
    assert_eq!(v.get("on"), Some(&Value::Bool(true)));
    assert_eq!(
        v.get("list"),
        Some(&Value::List(vec![Value::Int(1), Value::Int(2)]))
    );
    let curve = v.get("curve").unwrap();
    assert_eq!(curve.get("c"), Some(&Value::Float(0.5)));
    assert_eq!(
        curve.get("when"),
        Some(&Value::Str("1979-05-27T07:32:00Z".into()))
    );
}

#[test]
fn a_local_scheduler_generates_its_secret_once() {
    let d = std::env::temp_dir().join(format!("spate-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let ep = Endpoint::Unix(d.join("s.sock"));
    let path = secret_path_for(&ep).unwrap();
    assert_eq!(path, d.join("s.sock.secret"));
    // SPATE_SECRET must not interfere (tests run without it).
    if std::env::var_os("SPATE_SECRET").is_some() {
        return;
    }
    let (s1, o1) = server_secret(None, std::slice::from_ref(&ep)).unwrap();
    assert_eq!(o1, SecretOrigin::Generated(path.clone()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (s2, o2) = server_secret(None, std::slice::from_ref(&ep)).unwrap();
    assert_eq!(o2, SecretOrigin::Beside(path.clone()));
    assert_eq!(s1, s2);
    // With a TCP endpoint and no secret anywhere: refused, never generated.
    let ep2 = Endpoint::Unix(d.join("other.sock"));
    let tcp: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    assert!(server_secret(None, &[ep2, tcp]).is_err());
    assert!(!d.join("other.sock.secret").exists());
    let _ = std::fs::remove_dir_all(&d);
}
