//! Fallback engine: level-triggered epoll, `recvmmsg` to drain a ready socket in batches, and
//! `sendmmsg` to push everything bound for the same outgoing socket in one call.
//!
//! Used when io_uring is unavailable (old kernel, seccomp) or forced by config. All buffers are
//! allocated once at thread start; the loop itself allocates nothing.

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::{drain_commands, housekeeping, token, Applied, Forward, WorkerParts, MAX_DATAGRAM, TIMEOUT_TICK};
use crate::sys::{aim_msghdr, from_sockaddr, to_sockaddr, zeroed_storage};

/// Datagrams per recvmmsg/sendmmsg call.
const BATCH: usize = 64;
/// recvmmsg rounds per readiness before moving on to other sockets (fairness).
const ROUNDS: usize = 4;
const WAKE_TOKEN: u64 = u64::MAX;

/// Preallocated recvmmsg/sendmmsg state. Pointers are re-aimed per call (cheap) so the struct
/// can live in a Box without self-references.
pub(crate) struct Batch {
    bufs: Box<[[u8; MAX_DATAGRAM]]>,
    rx_names: Box<[libc::sockaddr_storage]>,
    rx_iov: Box<[libc::iovec]>,
    rx_hdrs: Box<[libc::mmsghdr]>,
    tx_names: Box<[libc::sockaddr_storage]>,
    tx_iov: Box<[libc::iovec]>,
    tx_hdrs: Box<[libc::mmsghdr]>,
    tx_meta: Box<[(Forward, usize)]>,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
        let (iov, hdr): (libc::iovec, libc::mmsghdr) = unsafe { (zeroed(), zeroed()) };
        Batch {
            bufs: vec![[0u8; MAX_DATAGRAM]; BATCH].into_boxed_slice(),
            rx_names: vec![zeroed_storage(); BATCH].into_boxed_slice(),
            rx_iov: vec![iov; BATCH].into_boxed_slice(),
            rx_hdrs: vec![hdr; BATCH].into_boxed_slice(),
            tx_names: vec![zeroed_storage(); BATCH].into_boxed_slice(),
            tx_iov: vec![iov; BATCH].into_boxed_slice(),
            tx_hdrs: vec![hdr; BATCH].into_boxed_slice(),
            tx_meta: vec![(Forward::NONE, 0); BATCH].into_boxed_slice(),
        }
    }

    /// One recvmmsg on `fd`; returns how many datagrams arrived (0 on EAGAIN or error).
    fn recv(&mut self, fd: RawFd) -> usize {
        const NAMELEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..BATCH {
            let h = &mut self.rx_hdrs[i].msg_hdr;
            aim_msghdr(h, &mut self.rx_names[i], NAMELEN, &mut self.rx_iov[i], self.bufs[i].as_mut_ptr(), MAX_DATAGRAM);
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(fd, self.rx_hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        n.max(0) as usize
    }

    /// Sends queued datagrams, one sendmmsg per run of equal outgoing sockets. Failures go back
    /// to the core as `SendFailed` drops.
    fn flush(&mut self, count: usize, core: &mut super::Core) {
        let mut start = 0;
        while start < count {
            let fd = self.tx_meta[start].0.fd;
            let mut end = start + 1;
            while end < count && self.tx_meta[end].0.fd == fd {
                end += 1;
            }
            let mut sent = start;
            while sent < end {
                // SAFETY: headers [sent, end) point at names/iovecs/buffers owned by self.
                let r = unsafe {
                    libc::sendmmsg(fd, self.tx_hdrs[sent..].as_mut_ptr(), (end - sent) as u32, libc::MSG_DONTWAIT)
                };
                if r <= 0 {
                    // The first remaining datagram is the one that failed; skip it and go on.
                    let (f, len) = self.tx_meta[sent];
                    core.send_failed(&f, len);
                    sent += 1;
                } else {
                    sent += r as usize;
                }
            }
            start = end;
        }
    }
}

/// Receives everything ready on one socket (bounded) and forwards it.
pub(crate) fn service_socket(batch: &mut Batch, core: &mut super::Core, fd: RawFd, tok: u64) {
    for _ in 0..ROUNDS {
        let n = batch.recv(fd);
        if n == 0 {
            return;
        }
        let now = core.now_ns();
        let mut queued = 0;
        for i in 0..n {
            let len = batch.rx_hdrs[i].msg_len as usize;
            let truncated = batch.rx_hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let Some(src) = from_sockaddr(&batch.rx_names[i]) else { continue };
            if let Some(f) = core.on_packet(tok, src, &batch.bufs[i][..len], truncated, now) {
                let namelen = to_sockaddr(&f.dst, &mut batch.tx_names[queued]);
                let h = &mut batch.tx_hdrs[queued].msg_hdr;
                aim_msghdr(h, &mut batch.tx_names[queued], namelen, &mut batch.tx_iov[queued], batch.bufs[i].as_ptr(), len);
                batch.tx_meta[queued] = (f, len);
                queued += 1;
            }
        }
        batch.flush(queued, core);
        core.events.flush();
        if n < BATCH {
            return;
        }
    }
}

fn epoll_ctl(ep: RawFd, op: libc::c_int, fd: RawFd, tok: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: tok };
    // SAFETY: plain syscall with a valid event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The engine thread's loop. Returns when the handle is dropped.
pub(crate) fn run(parts: &mut WorkerParts) -> io::Result<()> {
    // SAFETY: plain syscall; the fd is owned on success.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let ep = unsafe { OwnedFd::from_raw_fd(raw) };
    epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, parts.wake.as_raw_fd(), WAKE_TOKEN)?;
    let mut batch = Batch::new();
    // SAFETY: epoll_event is plain data.
    let mut events: Vec<libc::epoll_event> = vec![unsafe { zeroed() }; 256];
    let mut next_tick = Instant::now() + TIMEOUT_TICK;
    parts.ready.done(super::EngineKind::Epoll);
    loop {
        let wait_ms = parts.wait_budget(next_tick).as_millis() as i32;
        // SAFETY: the events buffer is valid for its length.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, wait_ms.max(0)) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut commands = false;
        for ev in &events[..n as usize] {
            let tok = ev.u64;
            if tok == WAKE_TOKEN {
                commands = true;
                continue;
            }
            let fd = {
                let slot = &parts.core.slots[token::slot(tok) as usize];
                match &slot.live {
                    Some(l) if slot.gen == token::gen(tok) => {
                        l.sockets[token::leg(tok)][token::socket(tok)].as_ref().map_or(-1, |s| s.as_raw_fd())
                    }
                    _ => -1,
                }
            };
            if fd >= 0 {
                service_socket(&mut batch, &mut parts.core, fd, tok);
            }
        }
        if commands {
            let ep_fd = ep.as_raw_fd();
            let alive = drain_commands(parts, |core, applied| match applied {
                Applied::Added(slot) => {
                    for (fd, tok) in core.sockets(slot, 0) {
                        if let Err(e) = epoll_ctl(ep_fd, libc::EPOLL_CTL_ADD, fd, tok) {
                            tracing::error!(error = %e, "epoll_ctl ADD failed; session will not relay");
                        }
                    }
                }
                // Closing the sockets removes them from the epoll set.
                Applied::Removed { live, .. } => drop(live),
                Applied::Nothing => {}
            });
            if !alive {
                return Ok(());
            }
        }
        housekeeping(&mut parts.core, &mut next_tick);
    }
}
