//! A two-"host" cluster in two network namespaces joined by a veth pair: the scheduler and a
//! consumer in namespace A, a producer in namespace B (with its own machine id, so the
//! scheduler sees two hosts and routes over TCP). A pattern job from B to A is read in A and
//! verified byte for byte, and its bytes are seen crossing the veth. Needs root (creates
//! namespaces); skipped with a printed reason otherwise.

mod cluster_common;

use std::process::Command;

use cluster_common::netns::{Netns, ip, link_stat, unavailable, wrap};
use cluster_common::{BIN, Cluster, WAIT, assert_verified, finish_read};

const MIB: u64 = 1 << 20;
const ADDR_A: &str = "10.203.1.1";
const ADDR_B: &str = "10.203.1.2";

/// rx_bytes of `dev` as seen inside namespace `ns`.
fn rx_bytes(ns: &str, dev: &str) -> u64 {
    link_stat(ns, dev, "rx_bytes")
}

#[test]
fn a_producer_in_another_namespace_streams_over_the_veth() {
    if let Some(why) = unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let pid = std::process::id();
    let (na, nb) = (format!("spate-ea-{pid}"), format!("spate-eb-{pid}"));
    let tag = pid % 100_000;
    let (va, vb) = (format!("e{tag}a"), format!("e{tag}b"));
    let mut guard = Netns::default();
    let mut setup = || -> Result<(), String> {
        // Each namespace is its own host (its own machine id), so B is not A's host.
        let id = 0x5ba7e_u128 << 64 | u128::from(pid) << 8;
        guard.add_host(&na, id | 1)?;
        guard.add_host(&nb, id | 2)?;
        ip(&[
            "link", "add", &va, "netns", &na, "type", "veth", "peer", "name", &vb, "netns", &nb,
        ])?;
        for (ns, dev, addr) in [(&na, &va, ADDR_A), (&nb, &vb, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        println!("SKIPPED: cannot build the namespaces: {e}");
        return;
    }

    let sched_tcp = format!("tcp:{ADDR_A}:7070");
    let mut c = Cluster::start_with("netns", wrap(&na), std::slice::from_ref(&sched_tcp));
    // The consumer in A (joins over the scheduler's UNIX socket, takes data on vA's address).
    let args = c.node_args(
        "c0",
        "--consumer",
        None,
        &["--interface", &format!("{va}={ADDR_A}")],
    );
    c.spawn_daemon("c0", &args);
    // The producer in B reaches the scheduler over TCP across the veth.
    let args = c.node_args(
        "p0",
        "--producer",
        Some(&sched_tcp),
        &["--interface", &format!("{vb}={ADDR_B}")],
    );
    let mut in_b = Command::new("ip");
    in_b.args(["netns", "exec", &nb, BIN]);
    c.spawn_daemon_cmd("p0", &mut in_b, &args);
    c.wait_nodes(&["c0", "p0"]);

    let total = 24 * MIB;
    let before = rx_bytes(&na, &va);
    let spec = c.spec(
        "job",
        "kernel = \"pattern\"\nsize = \"24MiB\"\nchunk = \"1MiB\"\nnode = \"c0\"\n\n\
         [params]\nseed = 3\n",
    );
    let sub = c.submit_wait(&spec);
    let streams = sub.streams();
    assert_eq!(streams.len(), 1);
    let r = c.read(&streams[0], 3, &[]);
    let (code, rep) = finish_read(r, WAIT);
    assert_verified(code, &rep, total);
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(0), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "completed");
    let crossed = rx_bytes(&na, &va) - before;
    assert!(
        crossed >= total,
        "only {crossed} bytes arrived on {va}: the data did not cross the veth"
    );
}
