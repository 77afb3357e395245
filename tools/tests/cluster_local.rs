//! A local cluster of real processes (scheduler, producer and consumer daemons, `spate submit`
//! and `spate read`): many producers to one consumer, one producer to many consumers, and two
//! jobs at once; every stream verified byte for byte and every `submit --wait` exits 0.

mod cluster_common;

use cluster_common::{Cluster, WAIT, assert_verified, finish_read};

const MIB: u64 = 1 << 20;

#[test]
fn two_producers_feed_one_consumer() {
    let mut c = Cluster::start("m2o");
    c.node("c0", "--consumer");
    c.node("p0", "--producer");
    c.node("p1", "--producer");
    c.wait_nodes(&["c0", "p0", "p1"]);
    let spec = c.spec(
        "job",
        "kernel = \"pattern\"\nsize = \"24MiB\"\nchunk = \"1MiB\"\nnode = \"c0\"\n\n[params]\nseed = 7\n",
    );
    let sub = c.submit_wait(&spec);
    let streams = sub.streams();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["node"], "c0");
    assert_eq!(streams[0]["length"].as_u64(), Some(24 * MIB));
    let r = c.read(&streams[0], 7, &[]);
    let (code, rep) = finish_read(r, WAIT);
    assert_verified(code, &rep, 24 * MIB);
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(0), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "completed");
    // 24 chunks of 1 MiB: one latency each, task created -> released in order.
    let lat = &outcome["chunk_latency_us"];
    assert_eq!(lat["count"].as_u64(), Some(24), "{outcome}");
    assert!(lat["p50"].as_u64() <= lat["p99"].as_u64(), "{outcome}");
    assert!(lat["p99"].as_u64() <= lat["max"].as_u64(), "{outcome}");
}

#[test]
fn one_producer_feeds_two_consumers() {
    let mut c = Cluster::start("o2m");
    c.node("c0", "--consumer");
    c.node("c1", "--consumer");
    c.node("p0", "--producer");
    c.wait_nodes(&["c0", "c1", "p0"]);
    let spec = c.spec(
        "job",
        "kernel = \"pattern\"\nsize = \"16MiB\"\nchunk = \"1MiB\"\nsplit = { lines = 2 }\n\n\
         [[stream]]\nnode = \"c0\"\n\n[[stream]]\nnode = \"c1\"\n\n[params]\nseed = 9\n",
    );
    let sub = c.submit_wait(&spec);
    let streams = sub.streams();
    assert_eq!(streams.len(), 2);
    let readers: Vec<_> = streams.iter().map(|s| c.read(s, 9, &[])).collect();
    for (s, r) in streams.iter().zip(readers) {
        assert_eq!(s["node"], format!("c{}", s["stream"]));
        let (code, rep) = finish_read(r, WAIT);
        assert_verified(code, &rep, 8 * MIB);
    }
    let (code, outcome, err) = sub.finish(WAIT);
    assert_eq!(code, Some(0), "{outcome} {err}");
    assert_eq!(outcome["outcome"], "completed");
}

#[test]
fn two_jobs_run_at_once_on_the_same_consumers() {
    let mut c = Cluster::start("two");
    c.node("c0", "--consumer");
    c.node("c1", "--consumer");
    c.node("p0", "--producer");
    c.node("p1", "--producer");
    c.wait_nodes(&["c0", "c1", "p0", "p1"]);
    let spec = |seed: u64| {
        format!(
            "kernel = \"pattern\"\nsize = \"12MiB\"\nchunk = \"1MiB\"\nsplit = {{ lines = 2 }}\n\n\
             [[stream]]\nnode = \"c0\"\n\n[[stream]]\nnode = \"c1\"\n\n[params]\nseed = {seed}\n"
        )
    };
    let (s1, s2) = (c.spec("job1", &spec(11)), c.spec("job2", &spec(12)));
    // Both accepted (and started) before either is read: they run concurrently.
    let subs = [c.submit_wait(&s1), c.submit_wait(&s2)];
    let ids = [subs[0].job(), subs[1].job()];
    assert_ne!(ids[0], ids[1]);
    // The scheduler holds both at once, neither finished (nothing is read yet).
    c.wait_status("both jobs live", |s| {
        ids.iter().all(|id| {
            s["jobs"].as_array().is_some_and(|js| {
                js.iter().any(|j| {
                    j["job"].as_u64() == Some(*id)
                        && matches!(j["state"].as_str(), Some("running" | "delivered"))
                })
            })
        })
    });
    let mut readers = vec![];
    for (sub, seed) in subs.iter().zip([11, 12]) {
        for s in sub.streams() {
            readers.push(c.read(&s, seed, &[]));
        }
    }
    assert_eq!(readers.len(), 4);
    for r in readers {
        let (code, rep) = finish_read(r, WAIT);
        assert_verified(code, &rep, 6 * MIB);
    }
    for sub in subs {
        let job = sub.job();
        let (code, outcome, err) = sub.finish(WAIT);
        assert_eq!(code, Some(0), "job {job}: {outcome} {err}");
        assert_eq!(outcome["outcome"], "completed");
        assert_eq!(outcome["job"].as_u64(), Some(job));
    }
}
