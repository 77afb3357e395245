//! Pinned threads run on their cores.

use spate_runtime::thread::{available_cores, current_cpu, queue, spawn_pinned};
use spate_runtime::{Driver, DriverConfig, Op};
use std::time::Duration;

#[test]
fn pinned_threads_run_on_their_cores() {
    let cores = available_cores();
    assert!(!cores.is_empty());
    let mut threads = Vec::new();
    for &c in &cores {
        threads.push(
            spawn_pinned(&format!("t{c}"), c, move || {
                // Spin a little so the scheduler has the chance to move us (it must not).
                let mut seen = Vec::new();
                for _ in 0..50 {
                    seen.push(current_cpu().unwrap());
                    std::thread::yield_now();
                }
                seen
            })
            .unwrap(),
        );
    }
    for t in threads {
        let c = t.core();
        let seen = t.join().unwrap();
        assert!(seen.iter().all(|&s| s == c), "core {c}: ran on {seen:?}");
    }
}

#[test]
fn pinning_to_a_missing_core_names_the_available_ones() {
    let e = spawn_pinned("nope", 1000, || ()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("core 1000"), "{msg}");
    assert!(msg.contains("cores this process may use"), "{msg}");
}

#[test]
fn queue_wakes_a_thread_blocked_in_its_ring() {
    let (tx, rx) = queue::<u32>(4).unwrap();
    let core = available_cores()[0];
    let t = spawn_pinned("waiter", core, move || {
        let mut d = Driver::new(&DriverConfig::default()).unwrap();
        let mut got = Vec::new();
        let mut out = Vec::new();
        while got.len() < 3 {
            d.push(
                0,
                Op::PollIn {
                    fd: rx.notifier().fd(),
                },
            )
            .unwrap();
            d.wait(Some(Duration::from_secs(20)), &mut out).unwrap();
            assert!(!out.is_empty(), "not woken within 20 s");
            out.clear();
            rx.notifier().drain();
            while let Some(v) = rx.try_recv() {
                got.push(v);
            }
        }
        got
    })
    .unwrap();
    for v in [1, 2, 3] {
        tx.send(v).unwrap();
    }
    assert_eq!(t.join().unwrap(), vec![1, 2, 3]);
}
