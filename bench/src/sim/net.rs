//! Flows sharing links fairly: max-min fair rates by progressive filling (pure).
//!
//! Every node has an egress and an ingress link of its NIC's payload capacity, joined by a
//! non-blocking switch; a flow between two nodes crosses the sender's egress and the
//! receiver's ingress; a flow inside one node crosses that node's local link (a memory copy).

/// A flow's links (one or two) and the bytes it still has to move.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Link indices it crosses.
    pub links: Vec<usize>,
    /// Bytes left.
    pub left: f64,
    /// Its current rate (bytes/s).
    pub rate: f64,
}

/// Max-min fair rates for `flows` over links of capacity `caps` (bytes/s): the least loaded
/// link's fair share goes to every flow on it, which then leaves the other links it crosses
/// with that much less, until every flow has a rate. A flow on no link gets `+inf`.
pub fn max_min(caps: &[f64], flows: &mut [Flow]) {
    let mut cap = caps.to_vec();
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); caps.len()];
    for (i, f) in flows.iter().enumerate() {
        for &l in &f.links {
            on[l].push(i);
        }
    }
    let mut count: Vec<usize> = on.iter().map(Vec::len).collect();
    let mut done = vec![false; flows.len()];
    let mut left = flows.len();
    for (i, f) in flows.iter_mut().enumerate() {
        if f.links.is_empty() {
            f.rate = f64::INFINITY;
            done[i] = true;
            left -= 1;
        }
    }
    while left > 0 {
        // The bottleneck: the least share among links that still carry unassigned flows
        // (ties: the lowest link index, so the result does not depend on anything else).
        let mut best: Option<(usize, f64)> = None;
        for (l, &n) in count.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let share = cap[l].max(0.0) / n as f64;
            if best.is_none_or(|(_, s)| share < s) {
                best = Some((l, share));
            }
        }
        let Some((l, share)) = best else {
            break;
        };
        for &i in &on[l] {
            if done[i] {
                continue;
            }
            done[i] = true;
            left -= 1;
            flows[i].rate = share;
            for &l2 in &flows[i].links {
                cap[l2] -= share;
                count[l2] -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(links: &[usize]) -> Flow {
        Flow {
            links: links.to_vec(),
            left: 1.0,
            rate: 0.0,
        }
    }

    #[test]
    fn equal_flows_share_a_link_equally() {
        let mut f = vec![flow(&[0]), flow(&[0]), flow(&[0]), flow(&[0])];
        max_min(&[8.0], &mut f);
        assert!(f.iter().all(|f| f.rate == 2.0));
    }

    #[test]
    fn a_flow_held_elsewhere_leaves_its_share_to_the_others() {
        // Link 0 (cap 10) carries flows a, b; b also crosses link 1 (cap 2). b gets 2, a 8.
        let mut f = vec![flow(&[0]), flow(&[0, 1])];
        max_min(&[10.0, 2.0], &mut f);
        assert_eq!((f[0].rate, f[1].rate), (8.0, 2.0));
    }

    #[test]
    fn the_classic_three_link_example() {
        // Links of 1; flow 0 crosses links 0,1,2; flows 1, 2, 3 one link each: every link
        // has two flows, so all get 1/2.
        let mut f = vec![flow(&[0, 1, 2]), flow(&[0]), flow(&[1]), flow(&[2])];
        max_min(&[1.0, 1.0, 1.0], &mut f);
        assert!(f.iter().all(|f| f.rate == 0.5));
    }
}
