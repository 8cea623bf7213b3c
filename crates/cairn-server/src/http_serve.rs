//! How the HTTP port accepts and serves connections: TLS, read timeouts, shutdown.
//!
//! Connections are served here rather than by `axum::serve`, which sets no timeouts: a
//! client that connects and goes silent, trickles its headers or its body, or keeps an
//! HTTP/1 connection idle would hold a socket and a task for good (a slowloris).

use crate::http::{HttpPeer, app};
use crate::node::Node;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

/// How long the node waits for an HTTP client to send, unless `--http-read-timeout` says
/// otherwise: a connection's first request, each request's headers (on HTTP/1 the wait
/// after an answer included), each next piece of a body. nginx allows 60 s for headers
/// and body gaps and 75 s idle; a client pool reconnects.
pub const DEFAULT_HTTP_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP until `stop` turns true, over TLS when `tls` is given. A client silent for
/// `read_timeout` where a request or the rest of one is due is disconnected; HTTP/2
/// connections are pinged as the gRPC port's are.
pub(crate) async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    tls: Option<cairn_proto::tls::Live<rustls::ServerConfig>>,
    read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let app = app(node);
    let mut incoming = match tls {
        None => Incoming::Plain(listener),
        Some(tls) => Incoming::Tls(cairn_proto::tls::accept(listener, tls)),
    };
    // Every connection's task holds a clone of `live`; once all are gone, the last one ended.
    let (open, live) = watch::channel(());
    let conn_stop = stop.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = incoming.next() => a,
        };
        let Some((io, peer)) = accepted else { break };
        let conn = Connection {
            app: app.clone(),
            peer,
            read_timeout,
            stop: conn_stop.clone(),
            _live: live.clone(),
        };
        match io {
            Io::Plain(tcp) => tokio::spawn(conn.serve(tcp)),
            Io::Tls(tls) => tokio::spawn(conn.serve(*tls)),
        };
    }
    // Stop accepting (the TLS acceptor's task ends with its receiver), then let the open
    // connections finish what they were asked: each was told to close when idle.
    drop(incoming);
    drop(live);
    open.closed().await;
}

/// Where HTTP connections come from.
enum Incoming {
    Plain(tokio::net::TcpListener),
    /// Connections whose TLS handshake is done (see [`cairn_proto::tls::accept`]: handshakes
    /// run concurrently, not in the accept loop).
    Tls(tokio::sync::mpsc::Receiver<cairn_proto::tls::Handshaken>),
}

/// An accepted connection's stream.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Incoming {
    /// The next connection (none: no more will come).
    async fn next(&mut self) -> Option<(Io, HttpPeer)> {
        match self {
            Incoming::Plain(listener) => {
                let (tcp, _) = cairn_proto::net::accept_tcp(listener).await;
                Some((Io::Plain(tcp), HttpPeer::default()))
            }
            Incoming::Tls(accepted) => accepted.recv().await.map(|h| {
                let peer = HttpPeer {
                    certificate: h.peer,
                };
                (Io::Tls(Box::new(h.stream)), peer)
            }),
        }
    }
}

/// One HTTP connection being served.
struct Connection {
    app: Router,
    peer: HttpPeer,
    read_timeout: Duration,
    stop: watch::Receiver<bool>,
    /// Held while the connection lives (see [`serve`]).
    _live: watch::Receiver<()>,
}

impl Connection {
    /// Serves `io` until the client closes it, breaks a timeout, or the node stops.
    async fn serve<I>(mut self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use tower::ServiceExt as _;

        let asked = Arc::new(AtomicBool::new(false));
        let peer = axum::extract::ConnectInfo(self.peer);
        let read_timeout = self.read_timeout;
        let service = {
            let asked = asked.clone();
            self.app
                .map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
                    asked.store(true, Ordering::Relaxed);
                    let mut req =
                        req.map(|body| axum::body::Body::new(IdleBody::new(body, read_timeout)));
                    req.extensions_mut().insert(peer.clone());
                    req
                })
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // hyper's HTTP/1 timer runs whenever it waits for a request's headers, so it also
        // closes a connection left idle after an answer.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(crate::grpc::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(crate::grpc::KEEPALIVE_TIMEOUT);
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        // Before the first request hyper runs no timer (it is still reading which protocol
        // the client speaks), so that wait has its own.
        let first = tokio::time::sleep(read_timeout);
        tokio::pin!(first);
        let mut awaiting_first = true;
        let mut stopping = false;
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!("HTTP connection ended: {e}");
                    }
                    return;
                }
                () = &mut first, if awaiting_first => {
                    if !asked.load(Ordering::Relaxed) {
                        tracing::debug!(
                            "closing an HTTP connection that sent no request within {read_timeout:?}"
                        );
                        return;
                    }
                    awaiting_first = false;
                }
                _ = self.stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A request body that fails once its client has sent nothing of it for `idle` while the
/// handler waits for more (hyper sets no timer on bodies). The clock starts when the handler
/// first waits for a piece, so one that reads the body late is not cut short, and starts
/// again with each piece.
struct IdleBody<B> {
    inner: B,
    idle: Duration,
    /// Made on the first wait; armed while a wait is under way.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<B> IdleBody<B> {
    fn new(inner: B, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle,
            deadline: None,
            armed: false,
        }
    }
}

impl<B> http_body::Body for IdleBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let until = tokio::time::Instant::now() + this.idle;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if !this.armed {
            deadline.as_mut().reset(until);
            this.armed = true;
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                "the client sent nothing more of the request body for {:?}",
                this.idle
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
