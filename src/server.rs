//! Start-up: binds every configured listener (failing loudly, naming the entry), then serves
//! until SIGINT/SIGTERM.

use crate::config::{Config, TransportKind};
use crate::core::Core;
use crate::metrics::Metrics;
use crate::transport::{socket, tcp, udp};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listen[{index}] ({transport:?} {addr}): cannot bind: {source}")]
    Bind { index: usize, transport: TransportKind, addr: SocketAddr, source: std::io::Error },
}

/// A running sixgate: its listeners are bound; dropping the handle stops nothing, `shutdown` does.
pub struct Server {
    pub core: Arc<Core>,
    pub tcp_table: Arc<tcp::ConnectionTable>,
    pub bound: Vec<(TransportKind, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds all listeners and spawns their tasks on the current tokio runtime.
    pub async fn start(cfg: &Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::default());
        let core = Arc::new(Core::new(cfg, metrics));
        let tcp_table = Arc::new(tcp::ConnectionTable::default());
        let mut tasks = Vec::new();
        let mut bound = Vec::new();
        for (index, l) in cfg.listen.iter().enumerate() {
            let err = |source| StartError::Bind { index, transport: l.transport, addr: l.addr, source };
            match l.transport {
                TransportKind::Udp => {
                    let sock = socket::udp(l.addr).map_err(err)?;
                    let sock = tokio::net::UdpSocket::from_std(sock).map_err(err)?;
                    let local = sock.local_addr().map_err(err)?;
                    tracing::info!(%local, "listening on udp");
                    bound.push((l.transport, local));
                    tasks.push(tokio::spawn(udp::serve(Arc::new(sock), local, core.clone(), cfg.limits.max_message_bytes)));
                }
                TransportKind::Tcp => {
                    let lst = socket::tcp_listener(l.addr).map_err(err)?;
                    let lst = tokio::net::TcpListener::from_std(lst).map_err(err)?;
                    let local = lst.local_addr().map_err(err)?;
                    tracing::info!(%local, "listening on tcp");
                    bound.push((l.transport, local));
                    tasks.push(tokio::spawn(tcp::serve(lst, local, core.clone(), tcp_table.clone(), cfg.limits.clone())));
                }
            }
        }
        Ok(Server { core, tcp_table, bound, tasks })
    }

    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
