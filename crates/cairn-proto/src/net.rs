//! How gRPC channels reach a node: over TCP normally, or through a [`Dialer`] that a
//! deterministic simulation plugs in (the same code then runs over a simulated network).

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// The next connection on `listener`, with Nagle's delay off. When accepting fails (out of
/// descriptors and the like) it logs, backs off 50 ms rather than spin, and tries again.
pub async fn accept_tcp(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, remote);
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// A byte stream to or from a peer.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// A connection being opened.
pub type Dialing = Pin<Box<dyn Future<Output = io::Result<Box<dyn Conn>>> + Send>>;

/// Opens connections to `host:port` addresses.
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `addr`.
    fn dial(&self, addr: String) -> Dialing;
}

/// A shared dialer; `None` where TCP is meant.
pub type SharedDialer = Option<Arc<dyn Dialer>>;

/// A channel to `addr` (`host:port`) that connects on first use, through `dialer` when
/// given. `tune` sets timeouts and keep-alives on the endpoint.
pub fn lazy_channel(
    addr: &str,
    dialer: &SharedDialer,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = tune(Endpoint::from_shared(format!("http://{addr}"))?);
    Ok(match dialer {
        None => endpoint.connect_lazy(),
        Some(d) => {
            let d = d.clone();
            let target = addr.to_string();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let fut = d.dial(target.clone());
                async move { fut.await.map(TokioIo::new) }
            }))
        }
    })
}

/// An accepted connection, for a gRPC server fed by any stream of connections.
pub struct Accepted {
    conn: Box<dyn Conn>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    peer: Option<String>,
}

/// What a gRPC handler knows of its caller's connection (in the request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The address the connection was accepted on.
    pub local: Option<SocketAddr>,
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The common name of the caller's TLS certificate, verified against the cluster's CA.
    pub peer: Option<String>,
}

impl Accepted {
    /// Wraps `conn`, accepted on `local` from `remote`.
    pub fn new(conn: Box<dyn Conn>, local: Option<SocketAddr>, remote: Option<SocketAddr>) -> Self {
        Self {
            conn,
            local,
            remote,
            peer: None,
        }
    }

    /// Records the common name of the caller's verified certificate.
    pub fn with_peer(mut self, peer: Option<String>) -> Self {
        self.peer = peer;
        self
    }
}

impl Connected for Accepted {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            local: self.local,
            remote: self.remote,
            peer: self.peer.clone(),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
}

/// Accepted connections of a gRPC server.
pub type Incoming =
    Pin<Box<dyn futures_core::Stream<Item = io::Result<Accepted>> + Send + 'static>>;
