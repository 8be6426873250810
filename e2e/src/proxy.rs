//! A TCP proxy between two members that can pass, black-hole (accept, never answer) or cut
//! traffic: network partitions for the local suite, without root or namespaces.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Drop open connections; accept new ones but never forward a byte (callers time out).
    Blackhole,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral 127.0.0.1 port and forwards to `target`.
    pub async fn start(target: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    if *rx.borrow() == Mode::Blackhole {
                        // Hold the connection open and silent until the mode changes, then drop it.
                        let _ = rx.changed().await;
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(&target).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let pipe = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut ri, &mut wo) => {},
                            _ = tokio::io::copy(&mut ro, &mut wi) => {},
                        }
                    };
                    tokio::select! {
                        _ = pipe => {}
                        _ = rx.wait_for(|m| *m == Mode::Blackhole) => {}
                    }
                    let _ = wo.shutdown().await;
                    let _ = wi.shutdown().await;
                });
            }
        });
        Ok(Self { addr, mode: Arc::new(tx), task })
    }

    /// The proxy's listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the proxy does.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
