//! Per-leg counters and RTP receive statistics: sequence-based loss (RFC 3550 §6.4.1, A.1/A.3)
//! and interarrival jitter (RFC 3550 §6.4.1, A.8).
//!
//! Sans-IO: the engine hands in parsed header fields and an arrival time in nanoseconds since
//! its own epoch; nothing here reads a clock, allocates, or touches a socket.

use std::time::Duration;

/// RFC 3550 A.1: a jump of this many sequence numbers ahead is still "in order" (packets lost).
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: packets this far behind the highest seen are duplicates or reordered.
const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;

/// The fixed RTP header fields the statistics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Parses the fixed 12-byte header of an RTP (version 2) packet; `None` if it is not one.
    pub fn parse(pkt: &[u8]) -> Option<RtpHeader> {
        if pkt.len() < 12 || pkt[0] >> 6 != 2 {
            return None;
        }
        Some(RtpHeader {
            payload_type: pkt[1] & 0x7f,
            seq: u16::from_be_bytes([pkt[2], pkt[3]]),
            timestamp: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
            ssrc: u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]),
        })
    }
}

/// True if `pkt` looks like RTCP (version 2, packet type 192..=223 as RFC 5761 §4 uses to
/// demultiplex RTP and RTCP on one port).
pub fn is_rtcp(pkt: &[u8]) -> bool {
    pkt.len() >= 8 && pkt[0] >> 6 == 2 && (192..=223).contains(&pkt[1])
}

/// Loss and jitter of one received RTP stream (the current SSRC), RFC 3550 A.1 + A.8.
///
/// When the SSRC changes, the old stream's counts are folded into `*_prior` and the sequence
/// state restarts, so `lost()` stays cumulative across a re-INVITE or a new source.
#[derive(Debug, Clone, Copy, Default)]
pub struct RtpRxStats {
    ssrc: Option<u32>,
    clock_rate: u32,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    bad_seq: u32,
    received: u64,
    received_prior: u64,
    expected_prior: u64,
    /// RFC 3550 A.8's integer estimator: jitter scaled by 16, in timestamp units.
    jitter_q4: u32,
    last_transit: Option<u32>,
    /// Number of SSRC changes seen (a new stream on the same leg).
    ssrc_changes: u32,
}

impl RtpRxStats {
    /// `clock_rate` is the RTP timestamp rate (8000 for G.711); 0 disables jitter.
    pub fn new(clock_rate: u32) -> RtpRxStats {
        RtpRxStats { clock_rate, ..Default::default() }
    }

    /// Accounts one received RTP packet. `arrival_ns` is any monotonic clock in nanoseconds.
    pub fn on_packet(&mut self, hdr: &RtpHeader, arrival_ns: u64) {
        match self.ssrc {
            Some(s) if s == hdr.ssrc => {
                if !self.update_seq(hdr.seq) {
                    return;
                }
            }
            prior => {
                if prior.is_some() {
                    self.ssrc_changes = self.ssrc_changes.saturating_add(1);
                    self.expected_prior += self.expected_current();
                    self.received_prior += self.received;
                }
                self.ssrc = Some(hdr.ssrc);
                self.init_seq(hdr.seq);
                self.last_transit = None;
            }
        }
        self.update_jitter(hdr.timestamp, arrival_ns);
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.cycles = 0;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.received = 1;
    }

    /// RFC 3550 A.1 `update_seq` without the probation phase (a relay counts from the first
    /// packet). Returns false for a packet that is not counted (a jump being confirmed).
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                // u32 like RFC 3550's `cycles`: a sender stepping its sequence to force wraps
                // can make it wrap, never panic.
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A very large jump: restart only if the next packet confirms it (source restarted).
            if u32::from(seq) == self.bad_seq {
                self.expected_prior += self.expected_current();
                self.received_prior += self.received;
                self.init_seq(seq);
                return true;
            }
            self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
            return false;
        }
        // else: duplicate or reordered packet, counted as received.
        self.received += 1;
        true
    }

    fn update_jitter(&mut self, timestamp: u32, arrival_ns: u64) {
        if self.clock_rate == 0 {
            return;
        }
        // Microsecond resolution keeps this in u64 (no 128-bit division per packet) and is far
        // finer than any RTP clock; it overflows only after ~12 years of uptime at 48 kHz.
        // Arrival time in timestamp units, modulo 2^32 like the RTP timestamp itself (RFC 3550
        // A.8 does this arithmetic in 32 bits), so a timestamp wrap is not a 2^32 jump.
        let arrival_ts = ((arrival_ns / 1_000) * u64::from(self.clock_rate) / 1_000_000) as u32;
        let transit = arrival_ts.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit.wrapping_sub(last) as i32).unsigned_abs().min(u32::MAX >> 4);
            // J += (|D| - J)/16, kept scaled by 16 (RFC 3550 A.8); with |D| < 2^28 it stays < 2^32.
            let j = u64::from(self.jitter_q4);
            self.jitter_q4 = (j + u64::from(d) - ((j + 8) >> 4)).min(u64::from(u32::MAX)) as u32;
        }
        self.last_transit = Some(transit);
    }

    fn expected_current(&self) -> u64 {
        if self.ssrc.is_none() {
            return 0;
        }
        let ext_max = u64::from(self.cycles) + u64::from(self.max_seq);
        (ext_max + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Packets expected from the sequence numbers (all SSRCs so far).
    pub fn expected(&self) -> u64 {
        self.expected_prior + self.expected_current()
    }

    /// Packets counted as received (duplicates included, as in RFC 3550).
    pub fn received(&self) -> u64 {
        self.received_prior + self.received
    }

    /// Cumulative packets lost: expected − received; negative with duplicates (RFC 3550 §6.4.1).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received() as i64
    }

    /// Interarrival jitter in timestamp units (the value an RTCP report block carries).
    pub fn jitter_ts(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Interarrival jitter as a duration (needs the clock rate).
    pub fn jitter(&self) -> Duration {
        if self.clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::from(self.jitter_q4) * 1_000_000_000 / 16 / u64::from(self.clock_rate))
    }

    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    pub fn ssrc_changes(&self) -> u32 {
        self.ssrc_changes
    }

    pub fn highest_ext_seq(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// From an address that is not this leg's party (strict source; "RTP bleed" protection).
    StrictSource,
    /// The other leg has no known peer yet (no SDP address, nothing latched).
    NoDestination,
    /// Larger than the receive buffer; truncated data is never forwarded.
    Truncated,
    /// The kernel refused the send (buffer full, unreachable).
    SendFailed,
}

/// Drop counters of one leg, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub strict_source: u64,
    pub no_destination: u64,
    pub truncated: u64,
    pub send_failed: u64,
}

impl DropCounts {
    pub fn add(&mut self, reason: DropReason) {
        match reason {
            DropReason::StrictSource => self.strict_source += 1,
            DropReason::NoDestination => self.no_destination += 1,
            DropReason::Truncated => self.truncated += 1,
            DropReason::SendFailed => self.send_failed += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.strict_source + self.no_destination + self.truncated + self.send_failed
    }
}

/// Packets and bytes in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// A snapshot of one leg's statistics.
///
/// `rx_*` counts what the leg's peer sent us (accepted packets), `tx_*` what we sent to the leg's
/// peer; drops are charged to the leg the datagram arrived on.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegStats {
    pub rx_rtp: Counter,
    pub rx_rtcp: Counter,
    pub tx_rtp: Counter,
    pub tx_rtcp: Counter,
    pub drops: DropCounts,
    /// Time since the last accepted packet from this leg's peer (None: nothing received yet).
    pub last_seen_ago: Option<Duration>,
    /// Loss/jitter of the RTP stream received from this leg's peer.
    pub rtp: RtpStreamSummary,
}

/// Loss and jitter of a received RTP stream, ready to report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpStreamSummary {
    pub ssrc: Option<u32>,
    pub expected: u64,
    pub received: u64,
    pub lost: i64,
    pub jitter_ts: u32,
    pub jitter: Duration,
}

impl From<&RtpRxStats> for RtpStreamSummary {
    fn from(s: &RtpRxStats) -> Self {
        RtpStreamSummary {
            ssrc: s.ssrc(),
            expected: s.expected(),
            received: s.received(),
            lost: s.lost(),
            jitter_ts: s.jitter_ts(),
            jitter: s.jitter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(seq: u16, ts: u32) -> RtpHeader {
        RtpHeader { payload_type: 0, seq, timestamp: ts, ssrc: 0x1234 }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn parse_rejects_non_rtp() {
        assert!(RtpHeader::parse(&[0x80; 11]).is_none());
        assert!(RtpHeader::parse(&[0x40; 12]).is_none());
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 0x08;
        p[2..4].copy_from_slice(&7u16.to_be_bytes());
        p[8..12].copy_from_slice(&9u32.to_be_bytes());
        let h = RtpHeader::parse(&p).unwrap();
        assert_eq!((h.payload_type, h.seq, h.ssrc), (8, 7, 9));
        assert!(is_rtcp(&[0x80, 200, 0, 6, 0, 0, 0, 1]));
        assert!(!is_rtcp(&p));
    }

    #[test]
    fn perfect_stream_has_no_loss_and_no_jitter() {
        let mut s = RtpRxStats::new(8000);
        for i in 0..100u16 {
            s.on_packet(&hdr(i, u32::from(i) * 160), u64::from(i) * 20 * MS);
        }
        assert_eq!((s.expected(), s.received(), s.lost()), (100, 100, 0));
        assert_eq!(s.jitter_ts(), 0);
    }

    #[test]
    fn gaps_are_counted_as_loss() {
        let mut s = RtpRxStats::new(8000);
        // 0..=19 with 5, 6 and 13 missing: 20 expected, 17 received.
        for i in (0..20u16).filter(|i| ![5, 6, 13].contains(i)) {
            s.on_packet(&hdr(i, u32::from(i) * 160), u64::from(i) * 20 * MS);
        }
        assert_eq!(s.expected(), 20);
        assert_eq!(s.received(), 17);
        assert_eq!(s.lost(), 3);
    }

    #[test]
    fn reordered_and_duplicate_packets() {
        let mut s = RtpRxStats::new(0);
        for seq in [1u16, 2, 4, 3, 5, 5] {
            s.on_packet(&hdr(seq, 0), 0);
        }
        // expected 5 (1..=5), received 6 (one duplicate): lost is −1 as RFC 3550 allows.
        assert_eq!((s.expected(), s.received(), s.lost()), (5, 6, -1));
    }

    #[test]
    fn sequence_wrap_is_extended() {
        let mut s = RtpRxStats::new(0);
        for i in 0..10u32 {
            s.on_packet(&hdr((65530 + i) as u16, 0), 0);
        }
        assert_eq!(s.highest_ext_seq(), 65536 + 3);
        assert_eq!((s.expected(), s.lost()), (10, 0));
    }

    #[test]
    fn jitter_follows_rfc3550_a8_on_crafted_delays() {
        // 8 kHz, 20 ms packets (160 ts units). Every other packet arrives 5 ms (40 units) late:
        // |D| alternates 40, 40, ... after the first. Compute the reference with the RFC formula.
        let mut s = RtpRxStats::new(8000);
        let mut reference: f64 = 0.0;
        let mut last_transit: Option<f64> = None;
        for i in 0..50u64 {
            let delay_ms = if i % 2 == 1 { 5 } else { 0 };
            let arrival_ns = i * 20 * MS + delay_ms * MS;
            let ts = (i * 160) as u32;
            s.on_packet(&hdr(i as u16, ts), arrival_ns);
            let transit = (arrival_ns as f64 * 8000.0 / 1e9).floor() - f64::from(ts);
            if let Some(l) = last_transit {
                reference += ((transit - l).abs() - reference) / 16.0;
            }
            last_transit = Some(transit);
        }
        let got = f64::from(s.jitter_ts());
        assert!((got - reference).abs() <= 1.0, "jitter {got} vs RFC reference {reference}");
        // Converges towards 40 units (5 ms) from below.
        assert!(got > 30.0 && got <= 40.0, "{got}");
        let ms = s.jitter().as_secs_f64() * 1000.0;
        assert!(ms > 3.7 && ms <= 5.0, "{ms}");
    }

    #[test]
    fn jitter_is_unaffected_by_a_timestamp_wrap() {
        // Perfectly paced 20 ms packets whose RTP timestamp wraps past 2^32 halfway: jitter
        // must stay zero (a 2^32 jump in transit time would read as ~35 min of jitter).
        let mut s = RtpRxStats::new(8000);
        let start_ts = u32::MAX - 160 * 10;
        for i in 0..20u32 {
            s.on_packet(&hdr(i as u16, start_ts.wrapping_add(i * 160)), u64::from(i) * 20 * MS);
        }
        assert_eq!(s.jitter_ts(), 0);
    }

    #[test]
    fn hostile_timestamps_and_sequence_steps_never_overflow() {
        // Timestamps alternating 0 and 2^31 and a sequence stepping by 2999 (a wrap every ~22
        // packets) must neither panic (debug build) nor produce nonsense beyond the clamps.
        let mut s = RtpRxStats::new(8000);
        let mut seq: u16 = 0;
        for i in 0..1_500_000u64 {
            let ts = if i % 2 == 0 { 0 } else { 1 << 31 };
            s.on_packet(&hdr(seq, ts), i * MS);
            seq = seq.wrapping_add(2999);
        }
        assert!(s.jitter_ts() < 1 << 28);
    }

    #[test]
    fn jitter_with_gaps_and_a_delay_spike() {
        // Loss does not disturb jitter: transit is compared between consecutive *received* packets.
        let mut s = RtpRxStats::new(8000);
        let seqs: [(u16, u64); 6] = [(0, 0), (1, 20), (3, 60), (4, 80 + 30), (5, 100), (6, 120)];
        for (seq, at_ms) in seqs {
            s.on_packet(&hdr(seq, u32::from(seq) * 160), at_ms * MS);
        }
        // Diffs: 0, 0, 240 (30 ms spike), 240, 0 -> J = 240/16 = 15 (q4: 240), then
        // 240 + 240 - 15 = 465 (29 units), then 465 - 29 = 436 (27 units).
        assert_eq!(s.jitter_ts(), 27);
        assert_eq!(s.lost(), 1);
    }

    #[test]
    fn ssrc_change_keeps_cumulative_counts() {
        let mut s = RtpRxStats::new(0);
        for i in 0..10u16 {
            s.on_packet(&hdr(i, 0), 0);
        }
        let other = RtpHeader { ssrc: 99, ..hdr(5000, 0) };
        s.on_packet(&other, 0);
        s.on_packet(&RtpHeader { seq: 5002, ..other }, 0);
        assert_eq!(s.ssrc_changes(), 1);
        assert_eq!(s.ssrc(), Some(99));
        assert_eq!((s.expected(), s.received(), s.lost()), (13, 12, 1));
    }

    #[test]
    fn big_jump_restarts_only_when_confirmed() {
        let mut s = RtpRxStats::new(0);
        for i in 0..5u16 {
            s.on_packet(&hdr(i, 0), 0);
        }
        s.on_packet(&hdr(30000, 0), 0); // stray: not counted
        assert_eq!(s.received(), 5);
        s.on_packet(&hdr(40000, 0), 0); // stray again, different
        s.on_packet(&hdr(40001, 0), 0); // confirms a restart at 40001
        s.on_packet(&hdr(40002, 0), 0);
        assert_eq!(s.received(), 7);
        assert_eq!(s.lost(), 0);
    }
}
