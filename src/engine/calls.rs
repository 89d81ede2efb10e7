//! Calls after the answer: each relayed call's media watched for one-way audio, and a call
//! record (one [`CallRecord`] per INVITE the proxy forwarded) when the call is over.
//!
//! One-way audio: once a second the engine asks the relay for the counters of every answered
//! call's sessions ([`MediaOp::Stats`], answered by [`super::Input::MediaStats`]). A stream whose
//! SDPs say both sides send, where packets keep arriving from one side while none has come from
//! the other for `[media] one_way_audio_secs`, is one-way: a warning names the silent side and
//! the likely cause, [`Stats::one_way_audio_calls`](super::Stats) counts the call once, and the
//! dialog carries the finding for `sixgate ctl calls` until media flows both ways again.
//!
//! Call records: an answered call's record is made when its dialog ends, then waits (at most
//! [`RECORD_WAIT`]) for the relay's final statistics of its sessions
//! ([`super::Input::MediaClosed`]); an unanswered call's record is made with its final answer.
//! Records leave as [`Event::CallRecord`]; the driver appends them to a file.
//!
//! Must never: judge a stream the SDPs put on hold, or hold a record past [`RECORD_WAIT`].

use super::dialog::{Dialog, Leg};
use super::media::MediaOp;
use super::{Engine, Event, Output, TimerRef};
use crate::media::offer::Side;
use serde::Serialize;
use sixgate_relay::{LegStats, SessionId, SessionStats};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often answered calls' media counters are read.
pub(super) const MEDIA_POLL: Duration = Duration::from_secs(1);
/// A direction counts as flowing while its last packet is at most this old (two polls and a
/// half: one late answer does not make a flowing side look silent).
const FLOWING: Duration = Duration::from_millis(2500);
/// How long a finished call's record waits for the relay's final statistics.
pub(super) const RECORD_WAIT: Duration = Duration::from_secs(2);

/// What an INVITE dialog knows for its record.
#[derive(Clone, Debug)]
pub struct CallInfo {
    /// When the INVITE arrived.
    pub started: Instant,
    /// When the 2xx made the dialog confirmed.
    pub answered: Option<Instant>,
    /// The From and To URIs of the INVITE.
    pub from: String,
    pub to: String,
}

/// One-way audio found on a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OneWay {
    /// "caller" or "callee": the side nothing is heard from.
    pub silent: &'static str,
    /// The likely cause and what to check.
    pub cause: String,
}

/// A dialog's media watch: per relayed stream, when each direction last carried packets.
#[derive(Clone, Debug, Default)]
pub struct MediaWatch {
    streams: HashMap<SessionId, StreamWatch>,
    /// The current finding, if media flows one way now.
    pub one_way: Option<OneWay>,
    /// The call's first finding (counted once, kept for the record).
    first: Option<OneWay>,
}

#[derive(Clone, Debug)]
struct StreamWatch {
    /// Packets received from each side (relay leg A = caller, B = callee) at the last poll.
    rx: [u64; 2],
    /// When each side's count last grew.
    grew: [Option<Instant>; 2],
    /// Since when each side is silent while expected to send.
    silent_since: [Instant; 2],
    expected: [bool; 2],
    /// The latest counters (a record's fallback when the final ones do not come).
    last: SessionStats,
}

impl StreamWatch {
    /// From the first poll after the answer: silence counts from then on.
    fn new(now: Instant, stats: SessionStats, expected: [bool; 2]) -> StreamWatch {
        StreamWatch { rx: [0; 2], grew: [None; 2], silent_since: [now; 2], expected, last: stats }
    }

    /// Takes a poll's counters; the silent side if media flows one way only for `after`.
    fn judge(&mut self, now: Instant, stats: SessionStats, expected: [bool; 2], after: Duration) -> Option<usize> {
        #[allow(clippy::needless_range_loop)] // d names the same side in five arrays
        for d in 0..2 {
            let rx = stats.legs[d].rx_rtp.packets;
            if rx != self.rx[d] {
                self.rx[d] = rx;
                self.grew[d] = Some(now);
                self.silent_since[d] = now;
            }
            if expected[d] && !self.expected[d] {
                // Just resumed (or answered): silence is counted from now on.
                self.silent_since[d] = now;
            }
        }
        self.expected = expected;
        self.last = stats;
        let flowing = |d: usize| self.grew[d].is_some_and(|t| now.saturating_duration_since(t) < FLOWING);
        (0..2).find(|&d| expected[d] && expected[1 - d] && flowing(1 - d) && !flowing(d) && now.saturating_duration_since(self.silent_since[d]) >= after)
    }
}

/// Why nothing is heard from `party`, from the counters of its leg.
fn cause(party: &str, leg: &LegStats) -> String {
    let strict = leg.drops.strict_source;
    match (leg.rx_rtp.packets, strict) {
        (0, 0) => format!(
            "no packet ever arrived from the {party}: a NAT or firewall in front of it blocks its media, or it does not send \
             (check its router's firewall and that it sends RTP to the address in the SDP it received)"
        ),
        (0, n) => format!(
            "{n} packets from an address other than the {party}'s were dropped (strict source), none came from the {party}'s own \
             address: address mismatch (its media leaves from another address than its SDP names, e.g. an undetected NAT or a SIP ALG \
             rewriting the SDP; turn the ALG off, or register the phone through its NAT)"
        ),
        (rx, 0) => format!("the {party} stopped sending after {rx} packets (muted, or its media path broke)"),
        (rx, n) => format!(
            "the {party} stopped sending after {rx} packets and {n} packets from another address were dropped (strict source): \
             its media address changed mid-call (a NAT rebinding)"
        ),
    }
}

/// One leg of a call in a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordLeg {
    pub transport: String,
    pub family: &'static str,
    pub address: String,
}

impl RecordLeg {
    pub fn of(l: &Leg) -> RecordLeg {
        RecordLeg {
            transport: format!("{:?}", l.transport).to_ascii_lowercase(),
            family: if l.remote.is_ipv6() { "IPv6" } else { "IPv4" },
            address: l.remote.to_string(),
        }
    }
}

/// What the relay counted from one party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
    /// RTP packets missing by sequence number (negative: duplicates).
    pub lost: i64,
    /// RFC 3550 interarrival jitter, in microseconds.
    pub jitter_us: u64,
    /// Packets dropped (strict source, no destination yet, truncated, send failures).
    pub dropped: u64,
}

impl DirectionStats {
    fn of(l: &LegStats) -> DirectionStats {
        DirectionStats {
            packets: l.rx_rtp.packets + l.rx_rtcp.packets,
            bytes: l.rx_rtp.bytes + l.rx_rtcp.bytes,
            lost: l.rtp.lost,
            jitter_us: l.rtp.jitter.as_micros() as u64,
            dropped: l.drops.total(),
        }
    }
}

/// One relayed stream in a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordStream {
    pub session: u64,
    /// Our relay addresses on the caller's and the callee's side.
    pub caller_side: String,
    pub callee_side: String,
    pub from_caller: Option<DirectionStats>,
    pub from_callee: Option<DirectionStats>,
    /// Whether the figures are the relay's final ones (else those of the last poll, if any).
    #[serde(rename = "final")]
    pub complete: bool,
}

/// One finished call (README, "Call records", documents every field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    pub call_id: String,
    /// Unix time in milliseconds: the INVITE arrived, the 2xx came, the call ended (final
    /// answer of an unanswered call, BYE, timeout).
    pub start_ms: u64,
    pub answer_ms: Option<u64>,
    pub end_ms: u64,
    /// From answer to end (0 unanswered), in milliseconds.
    pub duration_ms: u64,
    pub from: String,
    pub to: String,
    /// The authenticated local user who placed the call.
    pub user: Option<String>,
    /// The carrier the call went to or came from.
    pub carrier: Option<String>,
    pub caller: RecordLeg,
    /// The callee's side (unanswered: the last destination tried, if any).
    pub callee: Option<RecordLeg>,
    /// answered, busy, no_answer, cancelled, rejected or failed.
    pub disposition: &'static str,
    /// The final status the caller got.
    pub status: u16,
    /// How an answered call ended: "BYE", "media timeout", "idle timeout", "BYE failed".
    pub end_reason: Option<&'static str>,
    /// The first one-way audio found during the call (it may have recovered since).
    pub one_way_audio: Option<OneWay>,
    pub media: Vec<RecordStream>,
}

/// The disposition of an unanswered call from its final status.
pub(super) fn disposition(status: u16, cancelled: bool) -> &'static str {
    match status {
        _ if cancelled => "cancelled",
        200..=299 => "answered",
        486 | 600 => "busy",
        408 | 480 => "no_answer",
        487 => "cancelled",
        500..=599 => "failed",
        _ => "rejected",
    }
}

/// A record waiting for its sessions' final statistics.
#[derive(Debug)]
pub(super) struct PendingRecord {
    record: CallRecord,
    waiting: usize,
}

impl Engine {
    /// Unix milliseconds at `now`.
    pub(super) fn unix_ms(&self, now: Instant) -> u64 {
        let since = self.epoch.map_or(Duration::ZERO, |e| now.saturating_duration_since(e));
        self.unix_at_epoch.saturating_mul(1000).saturating_add(since.as_millis() as u64)
    }

    /// Timer: ask the relay for the counters of every answered relayed call.
    pub(super) fn poll_media(&mut self, now: Instant) {
        let sessions: Vec<SessionId> = self
            .dialogs
            .values()
            .filter(|d| !d.early && d.call.is_some())
            .flat_map(|d| d.media.iter().flat_map(|m| m.call.streams.iter().flatten().map(|s| s.session)))
            .collect();
        if !sessions.is_empty() {
            self.out.push_back(Output::Media { id: 0, op: MediaOp::Stats(sessions) });
        }
        self.schedule(TimerRef::MediaPoll, Some(now + MEDIA_POLL));
    }

    /// The relay's counters (of a [`MediaOp::Stats`]): each answered call judged.
    pub(super) fn on_media_stats(&mut self, now: Instant, stats: Vec<(SessionId, SessionStats)>) {
        let after = self.media.one_way_after;
        let by_session: HashMap<SessionId, SessionStats> = stats.into_iter().collect();
        let mut found = Vec::new();
        for d in self.dialogs.values_mut().filter(|d| !d.early) {
            let Some(m) = &d.media else { continue };
            let mut one_way = None;
            let mut flowing_both = false;
            for (i, s) in m.call.streams.iter().enumerate() {
                let Some(s) = s else { continue };
                let Some(st) = by_session.get(&s.session) else { continue };
                let expected = [m.call.expects(i, Side::Caller), m.call.expects(i, Side::Callee)];
                let w = d.watch.streams.entry(s.session).or_insert_with(|| StreamWatch::new(now, *st, expected));
                match w.judge(now, *st, expected, after) {
                    Some(silent) if one_way.is_none() => {
                        let party = if silent == 0 { "caller" } else { "callee" };
                        one_way = Some(OneWay { silent: party, cause: cause(party, &st.legs[silent]) });
                    }
                    Some(_) => {}
                    None => flowing_both |= w.grew.iter().all(|g| g.is_some_and(|t| now.saturating_duration_since(t) < FLOWING)),
                }
            }
            // Sessions of an older offer (a family change) are no longer watched.
            d.watch.streams.retain(|id, _| m.call.streams.iter().flatten().any(|s| s.session == *id));
            let call_id = String::from_utf8_lossy(&d.call_id).into_owned();
            match one_way {
                Some(ow) if d.watch.one_way.is_none() => {
                    found.push((call_id, ow.clone(), d.watch.first.is_none()));
                    d.watch.first.get_or_insert_with(|| ow.clone());
                    d.watch.one_way = Some(ow);
                }
                Some(_) => {}
                None if d.watch.one_way.is_some() && flowing_both => {
                    tracing::info!(%call_id, "media flows both ways again");
                    d.watch.one_way = None;
                }
                None => {}
            }
        }
        for (call_id, ow, first) in found {
            tracing::warn!(%call_id, silent = ow.silent, cause = %ow.cause, "one-way audio: nothing heard from the {}", ow.silent);
            if first {
                self.stats.one_way_audio_calls += 1;
            }
            self.event(Event::OneWayAudio { call_id, silent: ow.silent, cause: ow.cause });
        }
    }

    /// The record of a finished call from its dialog; waits for final media statistics.
    pub(super) fn record_dialog(&mut self, now: Instant, d: &Dialog, reason: &'static str) {
        let Some(info) = &d.call else { return };
        let media: Vec<RecordStream> = d
            .media
            .iter()
            .flat_map(|m| m.call.streams.iter().flatten())
            .map(|s| {
                let last = d.watch.streams.get(&s.session).map(|w| w.last);
                RecordStream {
                    session: s.session.0,
                    caller_side: s.legs[0].rtp.to_string(),
                    callee_side: s.legs[1].rtp.to_string(),
                    from_caller: last.map(|l| DirectionStats::of(&l.legs[0])),
                    from_callee: last.map(|l| DirectionStats::of(&l.legs[1])),
                    complete: false,
                }
            })
            .collect();
        let answer_ms = info.answered.map(|a| self.unix_ms(a));
        let end_ms = self.unix_ms(now);
        let record = CallRecord {
            call_id: String::from_utf8_lossy(&d.call_id).into_owned(),
            start_ms: self.unix_ms(info.started),
            answer_ms,
            end_ms,
            duration_ms: answer_ms.map_or(0, |a| end_ms.saturating_sub(a)),
            from: info.from.clone(),
            to: info.to.clone(),
            user: d.user.clone(),
            carrier: d.carrier.clone(),
            caller: RecordLeg::of(&d.caller),
            callee: Some(RecordLeg::of(&d.callee)),
            disposition: "answered",
            status: 200,
            end_reason: Some(reason),
            one_way_audio: d.watch.first.clone(),
            media,
        };
        let sessions: Vec<SessionId> = record.media.iter().map(|s| SessionId(s.session)).collect();
        if sessions.is_empty() {
            self.event(Event::CallRecord(Box::new(record)));
            return;
        }
        let id = self.id();
        for s in &sessions {
            self.record_of_session.insert(*s, id);
        }
        self.records.insert(id, PendingRecord { record, waiting: sessions.len() });
        self.schedule(TimerRef::Record(id), Some(now + RECORD_WAIT));
    }

    /// A relay session's final statistics (its `Closed` event).
    pub(super) fn on_media_closed(&mut self, session: SessionId, stats: SessionStats) {
        let Some(id) = self.record_of_session.remove(&session) else { return };
        let Some(p) = self.records.get_mut(&id) else { return };
        if let Some(s) = p.record.media.iter_mut().find(|s| s.session == session.0) {
            s.from_caller = Some(DirectionStats::of(&stats.legs[0]));
            s.from_callee = Some(DirectionStats::of(&stats.legs[1]));
            s.complete = true;
        }
        p.waiting = p.waiting.saturating_sub(1);
        if p.waiting == 0 {
            self.record_due(id);
        }
    }

    /// Timer (or all final statistics in): the record leaves, complete or not.
    pub(super) fn record_due(&mut self, id: u64) {
        self.schedule(TimerRef::Record(id), None);
        if let Some(p) = self.records.remove(&id) {
            for s in &p.record.media {
                if self.record_of_session.get(&SessionId(s.session)) == Some(&id) {
                    self.record_of_session.remove(&SessionId(s.session));
                }
            }
            self.event(Event::CallRecord(Box::new(p.record)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sixgate_relay::LegStats;

    fn stats(caller: u64, callee: u64, strict_callee: u64) -> SessionStats {
        let mut legs = [LegStats::default(), LegStats::default()];
        legs[0].rx_rtp.packets = caller;
        legs[1].rx_rtp.packets = callee;
        legs[1].drops.strict_source = strict_callee;
        SessionStats { legs }
    }

    /// Polls once a second with the counters each side has sent by then.
    fn run(w: &mut StreamWatch, t0: Instant, secs: u64, counts: impl Fn(u64) -> (u64, u64), expected: [bool; 2]) -> Option<(u64, usize)> {
        (1..=secs).find_map(|s| {
            let (a, b) = counts(s);
            w.judge(t0 + Duration::from_secs(s), stats(a, b, 0), expected, Duration::from_secs(5)).map(|d| (s, d))
        })
    }

    #[test]
    fn a_silent_callee_is_found_after_the_configured_time_and_a_normal_call_never() {
        let t0 = Instant::now();
        let mut w = StreamWatch::new(t0, stats(0, 0, 0), [true, true]);
        assert_eq!(run(&mut w, t0, 20, |s| (s * 50, 0), [true, true]), Some((5, 1)), "callee silent from the answer on");
        let mut w = StreamWatch::new(t0, stats(0, 0, 0), [true, true]);
        assert_eq!(run(&mut w, t0, 60, |s| (s * 50, s * 50), [true, true]), None, "both send");
        let mut w = StreamWatch::new(t0, stats(0, 0, 0), [true, true]);
        assert_eq!(run(&mut w, t0, 20, |s| (s * 50, if s < 8 { s * 50 } else { 400 }), [true, true]), Some((13, 1)), "callee stops at 8 s");
        let mut w = StreamWatch::new(t0, stats(0, 0, 0), [true, true]);
        assert_eq!(run(&mut w, t0, 20, |_| (0, 0), [true, true]), None, "both silent is a media timeout, not one-way");
    }

    #[test]
    fn a_held_stream_is_not_judged_and_a_resume_restarts_the_clock() {
        let t0 = Instant::now();
        let mut w = StreamWatch::new(t0, stats(0, 0, 0), [false, true]);
        // The callee put the call on hold (sendonly): only it sends.
        assert_eq!(run(&mut w, t0, 20, |s| (0, s * 50), [false, true]), None);
        // Resumed at 21 s: the caller gets the full time from the resume.
        let found = (21..=40).find_map(|s| w.judge(t0 + Duration::from_secs(s), stats(0, s * 50, 0), [true, true], Duration::from_secs(5)).map(|d| (s, d)));
        assert_eq!(found, Some((26, 0)));
    }

    #[test]
    fn the_cause_tells_a_firewall_from_an_address_mismatch() {
        assert!(cause("callee", &stats(0, 0, 0).legs[1]).contains("no packet ever arrived from the callee"));
        assert!(cause("callee", &stats(0, 0, 7).legs[1]).contains("address mismatch"));
        assert!(cause("callee", &stats(0, 90, 0).legs[1]).contains("stopped sending after 90 packets"));
    }

    #[test]
    fn dispositions() {
        assert_eq!(disposition(486, false), "busy");
        assert_eq!(disposition(487, false), "cancelled");
        assert_eq!(disposition(404, true), "cancelled");
        assert_eq!(disposition(408, false), "no_answer");
        assert_eq!(disposition(503, false), "failed");
        assert_eq!(disposition(403, false), "rejected");
    }
}
