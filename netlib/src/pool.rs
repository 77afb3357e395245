//! A persistent connection pool keyed by peer endpoint: reuse, reconnect on failure (with
//! backoff), close idle connections. Pure bookkeeping over a connection handle `C`; the caller
//! passes the time, so it is tested deterministically. [`crate::raw::RawClient`] uses it.
//!
//! Back-off is for endpoints that cannot be reached (connects that fail, or connections that
//! fail before they are established, e.g. a refused handshake): [`Pool::failed`]. The end of
//! a connection that worked (the peer restarted, or closed it) is [`Pool::remove`]: the next
//! [`Pool::get`] connects at once, and only if that fails does the back-off start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;

/// Errors of [`Pool::get`].
#[derive(Debug, thiserror::Error)]
pub enum PoolError<E> {
    /// The endpoint failed recently: wait before reconnecting.
    #[error("endpoint failed recently; retry in {retry_in:?}")]
    Backoff {
        /// Time left.
        retry_in: Duration,
    },
    /// Connecting failed (the backoff starts).
    #[error(transparent)]
    Connect(E),
}

#[derive(Debug)]
struct Entry<C> {
    conn: Option<C>,
    last_used: Instant,
    failures: u32,
    next_try: Option<Instant>,
}

/// Connections by endpoint.
#[derive(Debug)]
pub struct Pool<C> {
    entries: HashMap<Endpoint, Entry<C>>,
    idle_after: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

impl<C> Pool<C> {
    /// Close connections idle for `idle_after`; after a failure wait `backoff_min`, doubling
    /// per consecutive failure up to `backoff_max`, before reconnecting.
    pub fn new(idle_after: Duration, backoff_min: Duration, backoff_max: Duration) -> Self {
        Pool {
            entries: HashMap::new(),
            idle_after,
            backoff_min,
            backoff_max,
        }
    }

    /// The connection to `ep`, reusing an open one or calling `connect`.
    pub fn get<E>(
        &mut self,
        ep: &Endpoint,
        now: Instant,
        connect: impl FnOnce(&Endpoint) -> Result<C, E>,
    ) -> Result<&mut C, PoolError<E>> {
        let e = self.entries.entry(ep.clone()).or_insert(Entry {
            conn: None,
            last_used: now,
            failures: 0,
            next_try: None,
        });
        e.last_used = now;
        if e.conn.is_none() {
            if let Some(t) = e.next_try
                && now < t
            {
                return Err(PoolError::Backoff { retry_in: t - now });
            }
            match connect(ep) {
                Ok(c) => {
                    e.conn = Some(c);
                    e.failures = 0;
                    e.next_try = None;
                }
                Err(err) => {
                    Self::backoff(e, now, self.backoff_min, self.backoff_max);
                    return Err(PoolError::Connect(err));
                }
            }
        }
        e.conn.as_mut().ok_or(PoolError::Backoff {
            retry_in: Duration::ZERO,
        })
    }

    fn backoff(e: &mut Entry<C>, now: Instant, min: Duration, max: Duration) {
        let shift = e.failures.min(16);
        e.failures = e.failures.saturating_add(1);
        e.next_try = Some(now + (min * (1u32 << shift)).min(max));
    }

    /// Replace the connection stored for `ep` (after connecting outside the pool).
    pub fn set(&mut self, ep: &Endpoint, conn: C) {
        if let Some(e) = self.entries.get_mut(ep) {
            e.conn = Some(conn);
        }
    }

    /// The connection to `ep` failed: drop it (returned) and back off before reconnecting.
    pub fn failed(&mut self, ep: &Endpoint, now: Instant) -> Option<C> {
        let (min, max) = (self.backoff_min, self.backoff_max);
        let e = self.entries.get_mut(ep)?;
        let c = e.conn.take();
        Self::backoff(e, now, min, max);
        c
    }

    /// Forget `ep`: its connection closed, or died after it was established (no back-off).
    pub fn remove(&mut self, ep: &Endpoint) -> Option<C> {
        self.entries.remove(ep).and_then(|e| e.conn)
    }

    /// Whether `conn` is the connection stored for `ep` (a connection that was replaced must
    /// not touch its successor's entry).
    pub fn is_current(&self, ep: &Endpoint, conn: &C) -> bool
    where
        C: PartialEq,
    {
        self.entries
            .get(ep)
            .and_then(|e| e.conn.as_ref())
            .is_some_and(|c| c == conn)
    }

    /// Mark `ep` used now.
    pub fn touch(&mut self, ep: &Endpoint, now: Instant) {
        if let Some(e) = self.entries.get_mut(ep) {
            e.last_used = now;
        }
    }

    /// Remove and return connections idle for the idle time (skipping those `busy` says are in
    /// use).
    pub fn reap_idle(&mut self, now: Instant, busy: impl Fn(&C) -> bool) -> Vec<(Endpoint, C)> {
        let idle: Vec<Endpoint> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.conn.as_ref().is_some_and(|c| !busy(c))
                    && now.duration_since(e.last_used) >= self.idle_after
            })
            .map(|(k, _)| k.clone())
            .collect();
        idle.into_iter()
            .filter_map(|k| {
                let c = self.entries.remove(&k)?.conn?;
                Some((k, c))
            })
            .collect()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| e.conn.is_some()).count()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    #[test]
    fn reuses_reconnects_with_backoff_and_reaps_idle() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p: Pool<u32> = Pool::new(ms(1000), ms(100), ms(400));
        let a = ep("tcp:10.0.0.1:7000");
        let b = ep("unix:/tmp/b.sock");
        let mut calls = 0;
        let connect = |n: u32| move |_: &Endpoint| -> Result<u32, &'static str> { Ok(n) };
        assert_eq!(*p.get(&a, t0, connect(1)).unwrap(), 1);
        // Reused: the connector is not called.
        assert_eq!(
            *p.get(&a, t0 + ms(10), |_| {
                calls += 1;
                Err("must not connect")
            })
            .unwrap(),
            1
        );
        assert_eq!(calls, 0);
        assert_eq!(*p.get(&b, t0 + ms(10), connect(2)).unwrap(), 2);
        assert_eq!(p.len(), 2);

        // Failure: dropped, then backoff 100 ms, doubling on repeated failures.
        assert_eq!(p.failed(&a, t0 + ms(20)), Some(1));
        assert!(matches!(
            p.get(&a, t0 + ms(50), connect(3)),
            Err(PoolError::Backoff { retry_in }) if retry_in == ms(70)
        ));
        assert!(matches!(
            p.get(&a, t0 + ms(120), |_| Err::<u32, _>("refused")),
            Err(PoolError::Connect("refused"))
        ));
        assert!(matches!(
            p.get(&a, t0 + ms(200), connect(3)),
            Err(PoolError::Backoff { retry_in }) if retry_in == ms(120)
        ));
        assert_eq!(*p.get(&a, t0 + ms(320), connect(4)).unwrap(), 4);

        // Idle: b last used at 10 ms, a at 320 ms.
        let reaped = p.reap_idle(t0 + ms(1100), |_| false);
        assert_eq!(reaped, vec![(b.clone(), 2)]);
        assert!(p.reap_idle(t0 + ms(1400), |c| *c == 4).is_empty());
        assert_eq!(p.reap_idle(t0 + ms(1400), |_| false), vec![(a.clone(), 4)]);
        assert!(p.is_empty());
    }

    #[test]
    fn an_established_connection_that_dies_is_replaced_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p: Pool<u32> = Pool::new(ms(1000), ms(100), ms(400));
        let a = ep("unix:/run/c1/data.sock");
        assert_eq!(*p.get(&a, t0, |_| Ok::<u32, ()>(1)).unwrap(), 1);
        assert!(p.is_current(&a, &1) && !p.is_current(&a, &2));
        // The consumer restarted: the connection that worked is forgotten, not backed off.
        assert_eq!(p.remove(&a), Some(1));
        assert_eq!(*p.get(&a, t0 + ms(1), |_| Ok::<u32, ()>(2)).unwrap(), 2);
        // Its successor's entry is not the old connection's.
        assert!(!p.is_current(&a, &1));
        // A connect that fails still backs off.
        assert_eq!(p.failed(&a, t0 + ms(2)), Some(2));
        assert!(matches!(
            p.get(&a, t0 + ms(3), |_| Ok::<u32, ()>(3)),
            Err(PoolError::Backoff { .. })
        ));
    }
}
