//! The LoadBalance policy's choices.

mod common;

use common::*;
use spate_scheduler::core::{Interface, JobId, NodeId, NodeInfo, Refusal};
use spate_scheduler::model::Cluster;
use spate_scheduler::policy::{JobView, LoadBalance, NodeView, Policy, Route};
use spate_scheduler::spec::JobPlan;

fn view(id: NodeId, info: &NodeInfo) -> NodeView<'_> {
    NodeView {
        id,
        info,
        tasks: 0,
        ring_bytes_used: 0,
    }
}

#[test]
fn reference_job_c_sizes() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/C.toml")).unwrap();
    let plan = JobPlan::parse(&text).unwrap();
    let pol = LoadBalance::default();
    let c = info("local", "h", false, true);
    let ps: Vec<NodeInfo> = (0..4)
        .map(|i| info(&format!("p{i}"), "h", true, false))
        .collect();
    let pv: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| view(NodeId(i as u64), p))
        .collect();
    let cv = vec![view(NodeId(9), &c); 4];
    let placement = pol.admit(&plan, &pv, &cv, &Cluster::default()).unwrap();
    // A line is 120000 bytes; 200 Mbit = 25 MB = 208 lines; 1 GiB / (4 producers x 4) = 67 MB.
    assert_eq!(placement.chunk_lines, 208);
    // Ring = chunk x producers x 4 = 208 x 120000 x 16, under the 1 GiB cap.
    assert_eq!(placement.rings, vec![208 * 120_000 * 16; 4]);
    // With 64 producers the 1 GiB cap shrinks the chunk: 1 GiB / 256 = 4194304 B = 34 lines.
    let many: Vec<NodeInfo> = (0..64)
        .map(|i| info(&format!("p{i}"), "h", true, false))
        .collect();
    let pv: Vec<_> = many
        .iter()
        .enumerate()
        .map(|(i, p)| view(NodeId(i as u64), p))
        .collect();
    let placement = pol.admit(&plan, &pv, &cv, &Cluster::default()).unwrap();
    assert_eq!(placement.chunk_lines, 34);
    assert!(placement.rings.iter().all(|&r| r <= 1 << 30));
}

#[test]
fn consumer_capacity_shrinks_rings_or_refuses() {
    let plan = JobPlan::parse("kernel = \"null\"\nlines = 100\nline_bytes = 1000\nchannels = 2\nnode = \"c\"\nchunk = { lines = 1 }").unwrap();
    let pol = LoadBalance::default();
    let p = info("p", "h", true, false);
    let mut c = info("c", "h", false, true);
    c.capacity = 6000;
    let pv = [view(NodeId(1), &p)];
    let cv = [view(NodeId(2), &c), view(NodeId(2), &c)];
    // Wanted 4000 per ring (1 producer x 4 chunks), 8000 > 6000: shrunk to 3000 each.
    assert_eq!(
        pol.admit(&plan, &pv, &cv, &Cluster::default())
            .unwrap()
            .rings,
        vec![3000, 3000]
    );
    c.capacity = 1500;
    let cv = [view(NodeId(2), &c), view(NodeId(2), &c)];
    assert_eq!(
        pol.admit(&plan, &pv, &cv, &Cluster::default()),
        Err(Refusal::Capacity {
            node: "c".into(),
            need: 2000,
            free: 1500
        })
    );
    assert_eq!(
        pol.admit(&plan, &[], &cv, &Cluster::default()),
        Err(Refusal::NoProducers)
    );
}

#[test]
fn producer_memory_bounds_the_chunk() {
    let plan = JobPlan::parse(
        "kernel = \"null\"\nlines = 1000\nline_bytes = 1000\nchannels = 2\nnode = \"c\"",
    )
    .unwrap();
    let pol = LoadBalance::default();
    let mut p = info("p", "h", true, false);
    p.capacity = 60_000; // 3 tasks x 2 channels x 10 lines
    let c = info("c", "h", false, true);
    let placement = pol
        .admit(
            &plan,
            &[view(NodeId(1), &p)],
            &[view(NodeId(2), &c); 2],
            &Cluster::default(),
        )
        .unwrap();
    assert_eq!(placement.chunk_lines, 10);
    p.capacity = 1000; // not even one line of both channels x 3 tasks
    assert!(matches!(
        pol.admit(
            &plan,
            &[view(NodeId(1), &p)],
            &[view(NodeId(2), &c); 2],
            &Cluster::default()
        ),
        Err(Refusal::Capacity { .. })
    ));
}

#[test]
fn locality_and_load_rank_jobs() {
    let plan = JobPlan::parse("kernel = \"null\"\nsize = 100\nnode = \"c\"").unwrap();
    let layout = plan.layout(1);
    let pol = LoadBalance::default();
    let p = info("p", "h1", true, false);
    let pv = view(NodeId(1), &p);
    let job = |hosts: Vec<&'static str>, tasks| JobView {
        id: JobId(1),
        plan: &plan,
        layout: &layout,
        consumer_hosts: hosts,
        tasks_in_flight: tasks,
    };
    let local_busy = pol.job_rank(&pv, &job(vec!["h1"], 50));
    let remote_idle = pol.job_rank(&pv, &job(vec!["h2"], 0));
    let remote_busy = pol.job_rank(&pv, &job(vec!["h2"], 5));
    assert!(local_busy < remote_idle);
    assert!(remote_idle < remote_busy);
    assert!(pol.tasks_in_flight(&pv) >= 2);
}

#[test]
fn routes_spread_over_interfaces() {
    let pol = LoadBalance::default();
    let mut c = info("c", "h2", false, true);
    c.interfaces = vec![
        Interface {
            name: "eth0".into(),
            addr: "10.0.0.2:7000".into(),
        },
        Interface {
            name: "eth1".into(),
            addr: "10.0.1.2:7000".into(),
        },
    ];
    let p = info("p", "h1", true, false);
    let local = info("l", "h2", true, false);
    // Producers start on different interfaces...
    let r: Vec<Route> = (1..=3)
        .map(|i| pol.route(&view(NodeId(i), &p), &view(NodeId(9), &c), 0))
        .collect();
    assert_eq!(r[0], Route::Remote(Some(c.interfaces[1].clone())));
    assert_eq!(r[1], Route::Remote(Some(c.interfaces[0].clone())));
    assert_eq!(r[2], r[0]);
    // ...and one producer's consecutive tasks take turns, so a one-to-one job uses both.
    let one: Vec<Route> = (0..4)
        .map(|k| pol.route(&view(NodeId(1), &p), &view(NodeId(9), &c), k))
        .collect();
    assert_eq!(one[0], Route::Remote(Some(c.interfaces[1].clone())));
    assert_eq!(one[1], Route::Remote(Some(c.interfaces[0].clone())));
    assert_eq!(one[2], one[0]);
    assert_eq!(one[3], one[1]);
    assert_eq!(
        pol.route(&view(NodeId(4), &local), &view(NodeId(9), &c), 7),
        Route::Local
    );
}
