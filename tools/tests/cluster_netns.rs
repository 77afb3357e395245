//! A two-"host" cluster in two network namespaces joined by a veth pair: the scheduler and a
//! consumer in namespace A, a producer in namespace B (with its own machine id, so the
//! scheduler sees two hosts and routes over TCP). A pattern job from B to A is read in A and
//! verified byte for byte, and its bytes are seen crossing the veth. Needs root (creates
//! namespaces); skipped with a printed reason otherwise.

mod cluster_common;

use std::process::Command;

use cluster_common::{BIN, Cluster, WAIT, assert_verified, finish_read};

const MIB: u64 = 1 << 20;
const ADDR_A: &str = "10.203.1.1";
const ADDR_B: &str = "10.203.1.2";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the namespaces (and with them the veth pair) and their /etc/netns files on drop.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ip(&["netns", "del", n]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{n}"));
        }
        // Only when empty: other users of `ip netns` may keep files there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// rx_bytes of `dev` as seen inside namespace `ns`.
fn rx_bytes(ns: &str, dev: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{dev}/statistics/rx_bytes"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_producer_in_another_namespace_streams_over_the_veth() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: needs root to create network namespaces");
        return;
    }
    if ip(&["netns", "list"]).is_err() {
        println!("SKIPPED: `ip netns` (iproute2) is not available");
        return;
    }
    let pid = std::process::id();
    let (na, nb) = (format!("spate-ea-{pid}"), format!("spate-eb-{pid}"));
    let tag = pid % 100_000;
    let (va, vb) = (format!("e{tag}a"), format!("e{tag}b"));
    let _guard = Netns(vec![na.clone(), nb.clone()]);
    let setup = || -> Result<(), String> {
        ip(&["netns", "add", &na])?;
        ip(&["netns", "add", &nb])?;
        ip(&[
            "link", "add", &va, "netns", &na, "type", "veth", "peer", "name", &vb, "netns", &nb,
        ])?;
        for (ns, dev, addr) in [(&na, &va, ADDR_A), (&nb, &vb, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Namespace B is another host: `ip netns exec` binds /etc/netns/B/machine-id over
        // /etc/machine-id, which is where a node takes its host identity from.
        let etc = format!("/etc/netns/{nb}");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{etc}: {e}"))?;
        std::fs::write(
            format!("{etc}/machine-id"),
            format!("{:032x}\n", 0x5ba7e_u128 << 64 | u128::from(pid)),
        )
        .map_err(|e| format!("{etc}/machine-id: {e}"))?;
        Ok(())
    };
    if let Err(e) = setup() {
        println!("SKIPPED: cannot build the namespaces: {e}");
        return;
    }
    if std::fs::metadata("/etc/machine-id").is_err() {
        println!("SKIPPED: no /etc/machine-id to give namespace B its own host identity");
        return;
    }

    let in_a: Vec<String> = ["ip", "netns", "exec", &na].map(String::from).to_vec();
    let sched_tcp = format!("tcp:{ADDR_A}:7070");
    let mut c = Cluster::start_with("netns", in_a, std::slice::from_ref(&sched_tcp));
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
