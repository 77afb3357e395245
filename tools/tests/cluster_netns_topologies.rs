//! Three "hosts" in three network namespaces on one Linux bridge (in namespace A), each with its
//! own machine id, run the remote topologies in sequence on one cluster over TCP: one producer
//! to two consumers, two producers to one consumer, and two hosts that each produce and consume.
//! Every stream is read in its consumer's namespace and verified byte for byte. Needs root
//! (creates namespaces); skipped with a printed reason otherwise.

mod cluster_common;

use std::collections::HashMap;
use std::process::Command;

use cluster_common::netns::{Netns, ip, link_stat, unavailable, wrap};
use cluster_common::{BIN, Cluster, WAIT, assert_verified, finish_read};

const MIB: u64 = 1 << 20;
const ADDR_A: &str = "10.204.1.1";
const ADDR_B: &str = "10.204.1.2";
const ADDR_C: &str = "10.204.1.3";

/// The three namespaces and their links: a bridge in A, and a veth from it into B and into C.
struct Hosts {
    _guard: Netns,
    ns: [String; 3],
    /// A's bridge, B's end, C's end.
    dev: [String; 3],
    /// The bridge ports (in A) of B's and C's veths.
    port: [String; 2],
}

fn build_hosts() -> Result<Hosts, String> {
    let pid = std::process::id();
    let tag = pid % 100_000;
    let ns = ["a", "b", "c"].map(|h| format!("spate-t{h}-{pid}"));
    let dev = ["br", "b", "c"].map(|h| format!("t{tag}{h}"));
    let port = ["hb", "hc"].map(|h| format!("t{tag}{h}"));
    let mut guard = Netns::default();
    for (i, n) in ns.iter().enumerate() {
        guard.add_host(n, 0x5ba7e_u128 << 64 | u128::from(pid) << 8 | i as u128)?;
    }
    let a = ns[0].as_str();
    ip(&["-n", a, "link", "add", &dev[0], "type", "bridge"])?;
    ip(&[
        "-n",
        a,
        "addr",
        "add",
        &format!("{ADDR_A}/24"),
        "dev",
        &dev[0],
    ])?;
    ip(&["-n", a, "link", "set", &dev[0], "up"])?;
    for (i, addr) in [(1, ADDR_B), (2, ADDR_C)] {
        let (n, d, p) = (ns[i].as_str(), dev[i].as_str(), port[i - 1].as_str());
        ip(&[
            "link", "add", p, "netns", a, "type", "veth", "peer", "name", d, "netns", n,
        ])?;
        ip(&["-n", a, "link", "set", p, "master", &dev[0]])?;
        ip(&["-n", a, "link", "set", p, "up"])?;
        ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", d])?;
        ip(&["-n", n, "link", "set", d, "up"])?;
    }
    Ok(Hosts {
        _guard: guard,
        ns,
        dev,
        port,
    })
}

/// Bytes that entered the bridge from B's and from C's veth.
fn from_b_c(h: &Hosts) -> [u64; 2] {
    [0, 1].map(|i| link_stat(&h.ns[0], &h.port[i], "rx_bytes"))
}

/// Submits `spec`, reads every stream in its consumer's namespace (`ns_of` node name) with
/// `--verify SEED:STREAM`, checks each is `each` bytes and the job completed.
fn run_job(
    c: &mut Cluster,
    ns_of: &HashMap<&str, &str>,
    name: &str,
    spec: &str,
    seed: u64,
    nodes: &[&str],
    each: u64,
) {
    let spec = c.spec(name, spec);
    let sub = c.submit_wait(&spec);
    let streams = sub.streams();
    let placed: Vec<&str> = streams.iter().filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(placed, nodes, "{name}: {}", sub.accepted);
    let readers: Vec<_> = streams
        .iter()
        .map(|s| {
            let ns = ns_of[s["node"].as_str().unwrap()];
            c.read_in(&wrap(ns), s, seed, &[])
        })
        .collect();
    for (s, r) in streams.iter().zip(readers) {
        let (code, rep) = finish_read(r, WAIT);
        assert_eq!(s["length"].as_u64(), Some(each), "{name}: {s}");
        assert_verified(code, &rep, each);
    }
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(0), "{name}: {outcome} {err}");
    assert_eq!(outcome["outcome"], "completed", "{name}");
}

#[test]
fn three_hosts_run_one_to_many_many_to_one_and_many_to_many_over_tcp() {
    if let Some(why) = unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let h = match build_hosts() {
        Ok(h) => h,
        Err(e) => {
            println!("SKIPPED: cannot build the namespaces: {e}");
            return;
        }
    };
    let [na, nb, nc] = [0, 1, 2].map(|i| h.ns[i].as_str());
    let iface = |i: usize, addr: &str| format!("{}={addr}", h.dev[i]);
    let sched_tcp = format!("tcp:{ADDR_A}:7070");
    let mut c = Cluster::start_with("netns3", wrap(na), std::slice::from_ref(&sched_tcp));
    // Spawns node `name` with `role` in namespace `ns`, reaching the scheduler over TCP.
    let spawn = |c: &mut Cluster, name: &str, role: &str, ns: &str, iface: &str| {
        let args = c.node_args(name, role, Some(&sched_tcp), &["--interface", iface]);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN]);
        c.spawn_daemon_cmd(name, &mut cmd, &args);
    };
    let ns_of: HashMap<&str, &str> = [("a", na), ("b", nb), ("c", nc)].into();

    // One to many: B's producer feeds consumers on A and C. Only B produces, so every byte
    // enters the bridge from B.
    spawn(&mut c, "a", "--consumer", na, &iface(0, ADDR_A));
    spawn(&mut c, "b", "--producer", nb, &iface(1, ADDR_B));
    spawn(&mut c, "c", "--consumer", nc, &iface(2, ADDR_C));
    c.wait_nodes(&["a", "b", "c"]);
    let before = from_b_c(&h);
    run_job(
        &mut c,
        &ns_of,
        "one-to-many",
        "kernel = \"pattern\"\nsize = \"16MiB\"\nchunk = \"1MiB\"\nsplit = { lines = 2 }\n\n\
         [[stream]]\nnode = \"a\"\n\n[[stream]]\nnode = \"c\"\n\n[params]\nseed = 21\n",
        21,
        &["a", "c"],
        8 * MIB,
    );
    let from_b = from_b_c(&h)[0] - before[0];
    assert!(from_b >= 16 * MIB, "only {from_b} bytes came from B");

    // Many to one: producers on B and C feed the consumer on A.
    spawn(&mut c, "pc", "--producer", nc, &iface(2, ADDR_C));
    c.wait_nodes(&["pc"]);
    let before = from_b_c(&h);
    run_job(
        &mut c,
        &ns_of,
        "many-to-one",
        "kernel = \"pattern\"\nsize = \"16MiB\"\nchunk = \"1MiB\"\nnode = \"a\"\n\n\
         [params]\nseed = 22\n",
        22,
        &["a"],
        16 * MIB,
    );
    let after = from_b_c(&h);
    let (fb, fc) = (after[0] - before[0], after[1] - before[1]);
    assert!(
        fb + fc >= 16 * MIB,
        "only {fb} + {fc} bytes came from B and C"
    );
    // Both producers are idle when the job arrives, so each is handed at least one 1 MiB task.
    assert!(
        fb >= MIB && fc >= MIB,
        "one producer did all: {fb} from B, {fc} from C"
    );

    // Many to many: B and C each produce and consume, one stream each.
    spawn(&mut c, "cb", "--consumer", nb, &iface(1, ADDR_B));
    c.wait_nodes(&["cb"]);
    let ns_of: HashMap<&str, &str> = [("cb", nb), ("c", nc)].into();
    run_job(
        &mut c,
        &ns_of,
        "many-to-many",
        "kernel = \"pattern\"\nsize = \"16MiB\"\nchunk = \"1MiB\"\nsplit = { lines = 2 }\n\n\
         [[stream]]\nnode = \"cb\"\n\n[[stream]]\nnode = \"c\"\n\n[params]\nseed = 23\n",
        23,
        &["cb", "c"],
        8 * MIB,
    );
}
