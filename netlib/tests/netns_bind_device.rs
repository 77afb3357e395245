//! In two network namespaces joined by two veth pairs, a connection told to use one interface
//! (SO_BINDTODEVICE) carries its bytes on that interface; without it, routing picks the other.
//! Needs root (creates namespaces); skipped with a printed reason otherwise.

use std::fs::File;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, Landing, Offered, RawClient, RawConfig, RawServer,
};
use spate_runtime::{Arena, FixedBuf};

const CHUNK: usize = 1 << 20;
const BYTES: u64 = 32 << 20;

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

/// Deletes the namespaces (and with them the veths) on drop.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
}

/// tx_bytes of `dev` in namespace `ns`, read from /proc/thread-self/net/dev inside it.
fn tx_bytes(ns: &str, dev: &str) -> u64 {
    let (ns, dev) = (ns.to_string(), dev.to_string());
    thread::spawn(move || {
        enter(&ns);
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
            .unwrap_or_else(|| panic!("{dev} not in {text}"));
        let fields: Vec<u64> = line
            .split_once(':')
            .unwrap()
            .1
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        fields[8]
    })
    .join()
    .unwrap()
}

struct Count {
    arena: Arena,
    bytes: u64,
}

impl Landing for Count {
    fn offer(&mut self, _c: ConnId, _k: &ChunkKey) -> Offered {
        self.arena
            .alloc()
            .map_or(Offered::Wait, |b| Offered::Grant(b.into()))
    }
    fn landed(&mut self, _c: ConnId, k: &ChunkKey, _d: FixedBuf) {
        self.bytes += k.len;
    }
}

/// Serve in `ns` until `want` bytes landed.
fn serve(ns: String, want: u64) -> (Endpoint, thread::JoinHandle<u64>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = thread::spawn(move || {
        enter(&ns);
        let mut s = RawServer::new(RawConfig::default()).unwrap();
        let ep = s.listen(&"tcp:10.201.9.2:0".parse().unwrap()).unwrap();
        tx.send(ep).unwrap();
        let mut c = Count {
            arena: Arena::new("t-netns", CHUNK, 4).unwrap(),
            bytes: 0,
        };
        let t0 = Instant::now();
        while c.bytes < want {
            assert!(t0.elapsed() < Duration::from_secs(60), "server timed out");
            s.turn(&mut c, Some(Duration::from_millis(100))).unwrap();
        }
        c.bytes
    });
    (rx.recv().unwrap(), h)
}

/// From `ns`, send BYTES to `ep` leaving through `via`.
fn send(ns: String, ep: Endpoint, via: Via) {
    thread::spawn(move || {
        enter(&ns);
        let t0 = Instant::now();
        let stream = loop {
            match ep.connect(&via, Some(Duration::from_secs(2))) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                    eprintln!("retrying connect: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let mut client = RawClient::new(RawConfig::default()).unwrap();
        let conn = client.add(stream).unwrap();
        let arena = Arena::new("t-netns-src", CHUNK, 4).unwrap();
        let (mut off, mut acked) = (0u64, 0u64);
        let mut ev = Vec::new();
        while acked < BYTES {
            assert!(t0.elapsed() < Duration::from_secs(60), "client timed out");
            while off < BYTES {
                let Some(b) = arena.alloc() else { break };
                let key = ChunkKey {
                    job: 1,
                    stream: 0,
                    offset: off,
                    len: CHUNK as u64,
                };
                client
                    .send(conn, key, b.into(), 0)
                    .map_err(|r| r.error)
                    .unwrap();
                off += CHUNK as u64;
            }
            client
                .turn(Some(Duration::from_millis(100)), &mut ev)
                .unwrap();
            for e in ev.drain(..) {
                match e {
                    ClientEvent::Acked { key, .. } => acked += key.len,
                    other => panic!("{other:?}"),
                }
            }
        }
    })
    .join()
    .unwrap();
}

#[test]
fn a_connection_told_to_use_an_interface_carries_its_bytes_on_it() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: needs root to create network namespaces");
        return;
    }
    if ip(&["netns", "list"]).is_err() {
        println!("SKIPPED: `ip netns` (iproute2) is not available");
        return;
    }
    let pid = std::process::id();
    let (na, nb) = (format!("spate-a-{pid}"), format!("spate-b-{pid}"));
    let tag = pid % 100_000;
    let (a1, a2, b1, b2) = (
        format!("s{tag}a1"),
        format!("s{tag}a2"),
        format!("s{tag}b1"),
        format!("s{tag}b2"),
    );
    let _guard = Netns(vec![na.clone(), nb.clone()]);
    let setup = || -> Result<(), String> {
        ip(&["netns", "add", &na])?;
        ip(&["netns", "add", &nb])?;
        for (x, y) in [(&a1, &b1), (&a2, &b2)] {
            ip(&[
                "link", "add", x, "netns", &na, "type", "veth", "peer", "name", y, "netns", &nb,
            ])?;
        }
        for (ns, dev, addr) in [
            (&na, &a1, "10.201.1.1/24"),
            (&na, &a2, "10.201.2.1/24"),
            (&nb, &b1, "10.201.1.2/24"),
            (&nb, &b2, "10.201.2.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip(&["-n", &na, "link", "set", "lo", "up"])?;
        ip(&["-n", &nb, "link", "set", "lo", "up"])?;
        // The service address is reachable over both pairs; pair 1 is preferred.
        ip(&["-n", &nb, "addr", "add", "10.201.9.2/32", "dev", "lo"])?;
        ip(&[
            "-n",
            &na,
            "route",
            "add",
            "10.201.9.2/32",
            "via",
            "10.201.1.2",
            "dev",
            &a1,
            "metric",
            "10",
        ])?;
        ip(&[
            "-n",
            &na,
            "route",
            "add",
            "10.201.9.2/32",
            "via",
            "10.201.2.2",
            "dev",
            &a2,
            "metric",
            "20",
        ])?;
        Ok(())
    };
    if let Err(e) = setup() {
        println!("SKIPPED: cannot build the namespaces: {e}");
        return;
    }

    // Bound to interface 2: the bytes leave on a2, not on a1 (the preferred route).
    let (t1, t2) = (tx_bytes(&na, &a1), tx_bytes(&na, &a2));
    let (ep, srv) = serve(nb.clone(), BYTES);
    send(na.clone(), ep, Via::device(a2.clone()));
    assert_eq!(srv.join().unwrap(), BYTES);
    let (d1, d2) = (tx_bytes(&na, &a1) - t1, tx_bytes(&na, &a2) - t2);
    assert!(d2 >= BYTES, "only {d2} bytes left on {a2}");
    assert!(d1 < 1 << 20, "{d1} bytes left on {a1}");

    // Control: unbound, routing prefers pair 1.
    let (t1, t2) = (tx_bytes(&na, &a1), tx_bytes(&na, &a2));
    let (ep, srv) = serve(nb.clone(), BYTES);
    send(na.clone(), ep, Via::any());
    assert_eq!(srv.join().unwrap(), BYTES);
    let (d1, d2) = (tx_bytes(&na, &a1) - t1, tx_bytes(&na, &a2) - t2);
    assert!(d1 >= BYTES, "only {d1} bytes left on {a1}");
    assert!(d2 < 1 << 20, "{d2} bytes left on {a2}");

    // An interface that does not exist is a clear error.
    let e = thread::spawn(move || {
        enter(&na);
        "tcp:10.201.9.2:9"
            .parse::<Endpoint>()
            .unwrap()
            .connect(&Via::device("nope0"), Some(Duration::from_secs(1)))
            .unwrap_err()
            .to_string()
    })
    .join()
    .unwrap();
    assert!(e.contains("cannot bind to interface \"nope0\""), "{e}");
}
