//! Media hand-off (DESIGN.md "media/"): SDP parsing and rewriting between address families
//! ([`sdp`], RFC 8866 / RFC 3264 / RFC 3605), the per-call relay decision ([`policy`]), and the
//! relay (`sixgate-relay`) configured from `[media]` and started inside `sixgate run`, and
//! offer/answer through relay sessions ([`offer`]: which session carries each m-line, the peers
//! the relay learns, the SDP each side is shown). The engine drives it (`engine/media.rs`).

pub mod offer;
pub mod policy;
pub mod sdp;

use crate::config::{MediaConfig, RelayMode};
use sixgate_relay::{EngineChoice, RelayConfig};
use std::time::Duration;

/// The relay's configuration from `[media]`; `None` when media is never relayed.
pub fn relay_config(m: &MediaConfig) -> Option<RelayConfig> {
    if m.relay == RelayMode::Never || (m.ipv6.is_none() && m.ipv4.is_none()) {
        return None;
    }
    Some(RelayConfig {
        bind_v6: m.ipv6,
        bind_v4: m.ipv4,
        ports_v6: m.ports_v6,
        ports_v4: m.ports_v4,
        media_timeout: Duration::from_secs(m.media_timeout_secs),
        engine: match m.engine.as_str() {
            "io_uring" => EngineChoice::IoUring,
            "epoll" => EngineChoice::Epoll,
            _ => EngineChoice::Auto,
        },
        cpus: m.cpus.clone(),
        socket_recv_buffer: m.socket_recv_buffer,
        socket_send_buffer: m.socket_send_buffer,
        ..RelayConfig::default()
    })
}
