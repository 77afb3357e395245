//! Model check of the writer/reader atomics protocol (`spate_ring::ctl`), the same code the
//! ring runs, with loom's atomics. Run with:
//! `RUSTFLAGS="--cfg loom" cargo test -p spate-ring --test loom --release`
#![cfg(loom)]

use loom::sync::Arc;
use spate_ring::ctl::{Ctl, STATE_ENDED, STATE_OPEN};

/// Writer publishes 2 units into a ring of capacity 1 (so it must wait for the reader to
/// release), then ends; the reader waits on the frontier and releases. No lost wake-up
/// (loom fails on a deadlock), and the reader sees every unit and then the end.
#[test]
fn publish_wait_release_end() {
    let mut b = loom::model::Builder::new();
    // Bounded preemptions keep the run to seconds; 3 covers the lost-wake-up interleavings
    // (one preemption between each check and its sleep on either side).
    b.preemption_bound = Some(3);
    b.check(|| {
        let c = Arc::new(Ctl::new());
        let w = c.clone();
        let t = loom::thread::spawn(move || {
            for f in 1..=2u64 {
                // room for unit f needs read_pos >= f - capacity(1)
                while !w.wait_read_pos(f - 1, None) {}
                w.publish_frontier(f);
            }
            w.close(STATE_ENDED, 0, Some(2));
        });
        let mut pos = 0u64;
        loop {
            while !c.wait_frontier(pos + 1, None) {}
            let f = c.frontier();
            if f > pos {
                pos = f;
                c.publish_read_pos(pos);
                continue;
            }
            assert_ne!(c.state(), STATE_OPEN);
            break;
        }
        assert_eq!(pos, 2);
        assert_eq!(c.total_len(), 2);
        t.join().unwrap();
    });
}
