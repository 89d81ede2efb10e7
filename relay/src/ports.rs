//! Per-family port pool: even RTP ports (RTCP on the odd port above) from a configured range,
//! with a quarantine so a released port is not handed out again while late packets of the old
//! call may still arrive on it.
//!
//! Sans-IO: the caller passes `now`; binding sockets is the caller's business. Control path only
//! (lives behind the handle's mutex), never touched by the engines' hot path.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A pool of even ports `first..=last` (each reserving `port` and `port + 1`).
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    quarantined: VecDeque<(u16, Instant)>,
    quarantine: Duration,
    capacity: usize,
}

/// The even RTP ports of `first..=last` whose odd RTCP port is inside the range too.
fn pairs(first: u16, last: u16) -> impl Iterator<Item = u16> {
    let start = u32::from(first) + u32::from(first) % 2;
    (start..u32::from(last)).step_by(2).filter(|p| *p != 0).map(|p| p as u16)
}

impl PortPool {
    /// Builds the pool from an inclusive range. The first port is rounded up to even, and a pair
    /// is only included if its odd RTCP port is inside the range too.
    pub fn new(first: u16, last: u16, quarantine: Duration) -> PortPool {
        let free: VecDeque<u16> = pairs(first, last).collect();
        let capacity = free.len();
        PortPool { free, quarantined: VecDeque::new(), quarantine, capacity }
    }

    /// Number of RTP/RTCP pairs an inclusive range holds (for validating a config).
    pub fn pairs_in(first: u16, last: u16) -> usize {
        pairs(first, last).count()
    }

    /// Number of RTP/RTCP pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pairs available right now (quarantine expired ones included).
    pub fn available(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.free.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(port, since)) = self.quarantined.front() {
            if now.saturating_duration_since(since) < self.quarantine {
                break;
            }
            self.quarantined.pop_front();
            self.free.push_back(port);
        }
    }

    /// Takes the least recently used free RTP port, or `None` if every pair is in use or in
    /// quarantine.
    pub fn allocate(&mut self, now: Instant) -> Option<u16> {
        self.expire(now);
        self.free.pop_front()
    }

    /// Returns a port; it becomes available again `quarantine` after `now`.
    pub fn release(&mut self, port: u16, now: Instant) {
        debug_assert!(!self.free.contains(&port), "port {port} released twice");
        self.quarantined.push_back((port, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_yields_even_pairs_inside_the_range() {
        let mut p = PortPool::new(30001, 30010, Duration::ZERO);
        assert_eq!(p.capacity(), 4); // 30002, 30004, 30006, 30008 (30010's RTCP would be 30011)
        let now = Instant::now();
        let got: Vec<u16> = std::iter::from_fn(|| p.allocate(now)).collect();
        assert_eq!(got, vec![30002, 30004, 30006, 30008]);
    }

    #[test]
    fn exhaustion_then_quarantine_then_reuse() {
        let q = Duration::from_secs(30);
        let mut p = PortPool::new(40000, 40003, q);
        let t0 = Instant::now();
        let a = p.allocate(t0).unwrap();
        let b = p.allocate(t0).unwrap();
        assert_eq!(p.allocate(t0), None);
        p.release(a, t0);
        assert_eq!(p.allocate(t0 + Duration::from_secs(29)), None, "still quarantined");
        assert_eq!(p.allocate(t0 + q), Some(a));
        p.release(b, t0 + q);
        assert_eq!(p.available(t0 + q * 2), 1);
    }

    #[test]
    fn released_ports_go_to_the_back() {
        let mut p = PortPool::new(50000, 50005, Duration::ZERO);
        let t = Instant::now();
        let a = p.allocate(t).unwrap();
        p.release(a, t);
        assert_ne!(p.allocate(t), Some(a), "least recently used first");
    }
}
