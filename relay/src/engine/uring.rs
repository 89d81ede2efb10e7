//! Default engine: one io_uring per thread. Each socket has one multishot `RECVMSG` drawing
//! from a provided-buffer ring; a forwarded datagram is sent straight out of the buffer it was
//! received into (`SEND` with a destination address, i.e. sendto; no copy, no msghdr), and the
//! buffer goes back to the ring when the send completes. All submissions of a loop iteration go to the kernel in one `io_uring_enter`,
//! which also waits for the next completions.
//!
//! Safety rule for deletions: every queued SQE is submitted before a deleted session's sockets
//! are closed, so a send can never go out of a recycled file descriptor.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{drain_commands, housekeeping, token, Applied, Forward, Live, WorkerParts, MAX_DATAGRAM, TIMEOUT_TICK};
use crate::sys::{from_sockaddr, to_sockaddr, zeroed_storage};

const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;

/// Provided buffers per thread (power of two, ≤ 32768).
const BUFFERS: u16 = 4096;
const BGID: u16 = 0;
/// Room reserved for the source address in each buffer (a sockaddr_in6 holds either family).
const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
const RECVMSG_OUT_LEN: usize = 16;
/// Each buffer: io_uring_recvmsg_out header, source address, then up to MAX_DATAGRAM payload.
const BUF_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + MAX_DATAGRAM;
const SQ_ENTRIES: u32 = 2048;
const CQ_ENTRIES: u32 = 4 * BUFFERS as u32;

fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: utsname is plain data filled by the kernel.
    let mut u: libc::utsname = unsafe { zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    let release: String = u.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// See [`super::probe_io_uring`].
pub(crate) fn probe() -> Result<(), String> {
    if !kernel_at_least(6, 0) {
        return Err("kernel older than 6.0 (no multishot recvmsg)".into());
    }
    let ring: IoUring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("register_probe: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::Send::CODE, "SEND"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    let buf_ring = BufRing::new(8, 64).map_err(|e| format!("buffer ring memory: {e}"))?;
    buf_ring.register(&ring).map_err(|e| format!("register_buf_ring: {e}"))?;
    ring.submitter().unregister_buf_ring(BGID).map_err(|e| format!("unregister_buf_ring: {e}"))?;
    Ok(())
}

/// The provided-buffer ring: a page-aligned array of entries shared with the kernel, and the
/// buffers themselves.
struct BufRing {
    entries: *mut types::BufRingEntry,
    map_len: usize,
    count: u16,
    buf_len: usize,
    tail: u16,
    bufs: Box<[u8]>,
}

impl BufRing {
    fn new(count: u16, buf_len: usize) -> io::Result<BufRing> {
        let map_len = usize::from(count) * size_of::<types::BufRingEntry>();
        // SAFETY: anonymous private mapping; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = BufRing {
            entries: p.cast(),
            map_len,
            count,
            buf_len,
            tail: 0,
            bufs: vec![0u8; usize::from(count) * buf_len].into_boxed_slice(),
        };
        for bid in 0..count {
            r.give_back(bid);
        }
        r.publish();
        Ok(r)
    }

    fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the entries mapping lives as long as self, which the engine keeps until the
        // ring is dropped (declared before it).
        unsafe { ring.submitter().register_buf_ring_with_flags(self.entries as u64, self.count, BGID, 0) }
    }

    fn buf(&self, bid: u16) -> &[u8] {
        let start = usize::from(bid) * self.buf_len;
        &self.bufs[start..start + self.buf_len]
    }

    /// Queues buffer `bid` for the kernel again (visible after `publish`).
    fn give_back(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs[usize::from(bid) * self.buf_len..].as_ptr() as u64;
        // SAFETY: idx < count, inside the mapping; only addr/len/bid are written (not the tail
        // that overlays entry 0's reserved field).
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(addr);
        e.set_len(self.buf_len as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail lives in entry 0 of our mapping; the kernel reads it with acquire.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; the ring using it is gone by now.
        unsafe { libc::munmap(self.entries.cast(), self.map_len) };
    }
}

/// Per-buffer send state: the datagram in buffer `bid` goes to `names[bid]`; `meta[bid]` says
/// which session/leg to charge if the send fails.
struct SendSlots {
    names: Box<[libc::sockaddr_storage]>,
    meta: Box<[(Forward, u32, usize)]>,
}

impl SendSlots {
    fn new(n: usize) -> SendSlots {
        SendSlots {
            names: vec![zeroed_storage(); n].into_boxed_slice(),
            meta: vec![(Forward::NONE, 0, 0); n].into_boxed_slice(),
        }
    }

    /// Fills slot `bid` and returns the SQE sending `payload` as `f` says.
    fn prepare(&mut self, bid: u16, f: Forward, gen: u32, payload: &[u8]) -> squeue::Entry {
        let i = usize::from(bid);
        let namelen = to_sockaddr(&f.dst, &mut self.names[i]);
        self.meta[i] = (f, gen, payload.len());
        // SEND with a destination (sendto; kernel 6.0+): no msghdr to copy in per packet.
        opcode::Send::new(types::Fd(f.fd), payload.as_ptr(), payload.len() as u32)
            .dest_addr((&self.names[i] as *const libc::sockaddr_storage).cast())
            .dest_addr_len(namelen)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data((KIND_SEND << token::KIND_SHIFT) | u64::from(bid))
    }
}

fn source_of(name: &[u8]) -> Option<std::net::SocketAddr> {
    let mut ss = zeroed_storage();
    let n = name.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: copies at most size_of(storage) bytes into the storage.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(), n) };
    from_sockaddr(&ss)
}

/// Pushes an SQE, submitting first if the queue is full.
fn push(ring: &mut IoUring, e: &squeue::Entry) {
    loop {
        // SAFETY: every pointer an SQE carries (msghdr, buffers) lives in the engine's
        // preallocated state until its completion.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return;
        }
        if let Err(err) = ring.submit() {
            tracing::warn!(error = %err, "io_uring submit with a full queue failed");
        }
    }
}

/// Makes the next ring set-ups fail (tests of the start-up fallback).
#[cfg(test)]
pub(crate) static FAIL_RING_SETUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn build_ring() -> io::Result<IoUring> {
    #[cfg(test)]
    if FAIL_RING_SETUP.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(io::Error::other("ring set-up failure injected by a test"));
    }
    // Single issuer + deferred task work (6.1+) keeps completions on this thread, batched.
    let tuned = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(SQ_ENTRIES);
    match tuned {
        Ok(r) => Ok(r),
        Err(_) => IoUring::builder().setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES),
    }
}

fn recv_entry(fd: RawFd, tok: u64, msg: &libc::msghdr) -> squeue::Entry {
    opcode::RecvMsgMulti::new(types::Fd(fd), msg, BGID).build().user_data(tok)
}

/// Errors of `io_uring_enter` after which the loop simply goes round again: a timeout, a
/// signal, a full completion queue (EBUSY: reap first) or a momentary lack of memory (EAGAIN).
fn transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN))
}

/// Submits everything queued. Without IORING_SETUP_SUBMIT_ALL the kernel stops at an SQE it
/// cannot set up (that one completes with an error), so go round until the queue is empty;
/// bounded, and a transient refusal leaves the rest for the next loop iteration.
fn submit_queued(ring: &mut IoUring) -> io::Result<()> {
    for _ in 0..SQ_ENTRIES {
        if ring.submission().is_empty() {
            return Ok(());
        }
        match ring.submit() {
            Ok(_) => {}
            Err(e) if transient(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The engine thread's loop. Returns when the handle is dropped.
pub(crate) fn run(parts: &mut WorkerParts) -> io::Result<()> {
    // Declared before the ring so they outlive it (locals drop in reverse order).
    let mut bufs = BufRing::new(BUFFERS, BUF_LEN)?;
    let mut sends = SendSlots::new(usize::from(BUFFERS));
    // SAFETY: msghdr is plain data; only the name/control lengths matter for multishot recvmsg.
    let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
    recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;
    let mut rearm: Vec<u64> = Vec::with_capacity(1024);
    let mut ring = build_ring()?;
    // Sockets of deleted sessions, kept open until every SQE queued so far has reached the
    // kernel: a receive armed (or a send queued) on a closed descriptor number could otherwise
    // land on whatever socket reuses that number next. Declared after the ring: dropped first.
    let mut closing: Vec<Live> = Vec::new();
    bufs.register(&ring)?;

    let wake_fd = parts.wake.as_raw_fd();
    let wake = opcode::PollAdd::new(types::Fd(wake_fd), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(KIND_WAKE << token::KIND_SHIFT);
    push(&mut ring, &wake);
    let mut next_tick = Instant::now() + TIMEOUT_TICK;
    parts.ready.done(super::EngineKind::IoUring);

    loop {
        let wait = parts.wait_budget(next_tick);
        let ts = types::Timespec::new().sec(wait.as_secs()).nsec(wait.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(e) => return Err(e),
        }
        if !closing.is_empty() && ring.submission().is_empty() {
            closing.clear();
        }
        let now = parts.core.now_ns();
        let mut commands = false;
        loop {
            let Some(cqe) = ring.completion().next() else { break };
            let ud = cqe.user_data();
            let (res, flags) = (cqe.result(), cqe.flags());
            match token::kind(ud) {
                KIND_RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        let mut forwarded = false;
                        if res >= 0 {
                            if let Ok(out) = types::RecvMsgOut::parse(&bufs.buf(bid)[..res as usize], &recv_msg) {
                                let truncated = out.is_payload_truncated();
                                if let Some(src) = source_of(out.name_data()) {
                                    let payload = out.payload_data();
                                    if let Some(f) = parts.core.on_packet(ud, src, payload, truncated, now) {
                                        let gen = parts.core.slots[f.slot as usize].gen;
                                        let e = sends.prepare(bid, f, gen, payload);
                                        push(&mut ring, &e);
                                        forwarded = true;
                                    }
                                }
                            }
                        }
                        if !forwarded {
                            bufs.give_back(bid);
                        }
                    }
                    if !cqueue::more(flags) && res != -libc::ECANCELED {
                        rearm.push(ud);
                    }
                }
                KIND_SEND => {
                    let bid = (ud & 0xffff) as u16;
                    if res < 0 {
                        let (f, gen, len) = sends.meta[usize::from(bid)];
                        if parts.core.slots.get(f.slot as usize).is_some_and(|s| s.gen == gen) {
                            parts.core.send_failed(&f, len);
                        }
                    }
                    bufs.give_back(bid);
                }
                KIND_WAKE => {
                    commands = true;
                    if !cqueue::more(flags) {
                        push(&mut ring, &wake);
                    }
                }
                _ => {} // KIND_CANCEL results need no action
            }
        }
        bufs.publish();
        // Re-arm receives that stopped (buffer ring ran dry) now that buffers are back.
        for tok in rearm.drain(..) {
            let s = &parts.core.slots[token::slot(tok) as usize];
            if let Some(live) = &s.live {
                if s.gen == token::gen(tok) {
                    if let Some(sock) = &live.sockets[token::leg(tok)][token::socket(tok)] {
                        push(&mut ring, &recv_entry(sock.as_raw_fd(), tok, &recv_msg));
                    }
                }
            }
        }
        if commands {
            let alive = drain_commands(parts, |core, applied| match applied {
                Applied::Added(slot) => {
                    for (fd, tok) in core.sockets(slot, KIND_RECV) {
                        push(&mut ring, &recv_entry(fd, tok, &recv_msg));
                    }
                }
                Applied::Removed { slot, gen, live } => {
                    // Closing the fd does not end a pending multishot receive; cancel it.
                    for (_, tok) in live.receive_tokens(KIND_RECV, gen, slot) {
                        let cancel = opcode::AsyncCancel::new(tok).build().user_data(KIND_CANCEL << token::KIND_SHIFT);
                        push(&mut ring, &cancel);
                    }
                    closing.push(live);
                }
                Applied::Nothing => {}
            });
            if !alive {
                return Ok(());
            }
            // Receives armed for new sessions, cancels and any sends referring to a deleted
            // session's sockets go to the kernel now; only then may those sockets close.
            submit_queued(&mut ring)?;
            if ring.submission().is_empty() {
                closing.clear();
            }
        }
        housekeeping(&mut parts.core, &mut next_tick);
    }
}
