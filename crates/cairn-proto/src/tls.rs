//! TLS on Cairn's connections (rustls on ring): the files of a certificates directory, the
//! configurations a node serves and dials with, a [`Dialer`] that speaks TLS, and an accept
//! loop that handshakes each connection on its own task.
//!
//! The layout of a certificates directory follows CockroachDB's: `ca.crt` (the cluster's
//! CA), `node.crt`/`node.key` (a node's certificate, common name `node`, valid as server
//! and client) and `client.USER.crt`/`client.USER.key` (common name `USER`). A node asks
//! every caller for a certificate but also accepts callers without one (they authenticate
//! with a token); what a certificate's common name allows is decided above this layer.
//!
//! A node's configurations are [`LiveTls`]: [`LiveTls::reload`] reads the directory again
//! and every connection accepted or dialed afterwards uses the new files (certificates are
//! rotated without a restart; connections already open keep their session).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::net::{Conn, Dialer, Dialing};

/// The cluster CA's certificate.
pub const CA_CERT: &str = "ca.crt";
/// The cluster CA's private key (kept only where certificates are made).
pub const CA_KEY: &str = "ca.key";
/// A node's certificate.
pub const NODE_CERT: &str = "node.crt";
/// A node's private key.
pub const NODE_KEY: &str = "node.key";
/// The common name of every node certificate: what the internal service admits.
pub const NODE_NAME: &str = "node";

/// How long a connection may take to finish its handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate file of client `user`.
pub fn client_cert(user: &str) -> String {
    format!("client.{user}.crt")
}

/// The key file of client `user`.
pub fn client_key(user: &str) -> String {
    format!("client.{user}.key")
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the certificates directory could not be read.
    #[error("cannot read {path}: {source} (create it with `cairn cert {hint}`)")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
        /// The `cairn cert` subcommand that makes it.
        hint: &'static str,
    },
    /// A file held nothing usable.
    #[error("{path} holds no {what} in PEM form")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was expected in it.
        what: &'static str,
    },
    /// rustls refused the configuration (a key that does not match its certificate, say).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA could not verify client certificates.
    #[error("client certificate verification: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, hint: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
        hint,
    })
}

fn read_certs(path: &Path, hint: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, hint)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Parse {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path, hint: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, hint)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Parse {
        path: path.to_path_buf(),
        what: "private key",
    })
}

fn roots(dir: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&dir.join(CA_CERT), "create-ca")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A configuration that can be replaced while connections are accepted and dialed with it:
/// each new connection takes the newest.
pub type Live<T> = tokio::sync::watch::Receiver<Arc<T>>;

/// A configuration that never changes.
fn fixed<T>(config: Arc<T>) -> Live<T> {
    // A receiver keeps the last value after its sender is gone.
    tokio::sync::watch::channel(config).1
}

/// What a node serves and dials with, from its certificates directory.
#[derive(Clone)]
pub struct NodeTls {
    /// The gRPC port's configuration (HTTP/2 only).
    pub grpc: Arc<ServerConfig>,
    /// The HTTP port's configuration (HTTP/1.1).
    pub http: Arc<ServerConfig>,
    /// How the node dials its peers: it trusts the CA and presents its node certificate.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

impl NodeTls {
    /// Loads `ca.crt`, `node.crt` and `node.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let roots = Arc::new(roots(dir)?);
        let chain = read_certs(&dir.join(NODE_CERT), "create-node")?;
        let key = read_key(&dir.join(NODE_KEY), "create-node")?;
        let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, TlsError> {
            // Callers without a certificate get through the handshake (a token may
            // authenticate them); one with a certificate of another CA does not.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()?;
            let mut c = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())?;
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(c))
        };
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            grpc: server(&[b"h2"])?,
            http: server(&[b"http/1.1"])?,
            client: Arc::new(client),
        })
    }
}

/// A node's TLS configurations, re-read from its certificates directory on
/// [`LiveTls::reload`].
pub struct LiveTls {
    dir: PathBuf,
    grpc: tokio::sync::watch::Sender<Arc<ServerConfig>>,
    http: tokio::sync::watch::Sender<Arc<ServerConfig>>,
    client: tokio::sync::watch::Sender<Arc<ClientConfig>>,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveTls({})", self.dir.display())
    }
}

impl LiveTls {
    /// Loads `ca.crt`, `node.crt` and `node.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let t = NodeTls::load(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            grpc: tokio::sync::watch::channel(t.grpc).0,
            http: tokio::sync::watch::channel(t.http).0,
            client: tokio::sync::watch::channel(t.client).0,
        })
    }

    /// Reads the directory again; on success, connections from now on use its files. On
    /// failure (a missing file, a key that does not match its certificate) nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let t = NodeTls::load(&self.dir)?;
        self.grpc.send_replace(t.grpc);
        self.http.send_replace(t.http);
        self.client.send_replace(t.client);
        Ok(())
    }

    /// The certificates directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The gRPC port's configuration.
    pub fn grpc(&self) -> Live<ServerConfig> {
        self.grpc.subscribe()
    }

    /// The HTTP port's configuration.
    pub fn http(&self) -> Live<ServerConfig> {
        self.http.subscribe()
    }

    /// What the node dials its peers with.
    pub fn client(&self) -> Live<ClientConfig> {
        self.client.subscribe()
    }
}

/// A client's configuration from `dir`: it trusts the CA in `ca.crt` and presents
/// `client.USER.crt` when that file exists. `alpn` is `h2` for gRPC, `http/1.1` for HTTP.
pub fn client_config(dir: &Path, user: &str, alpn: &[u8]) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(dir)?);
    let cert = dir.join(client_cert(user));
    let mut c = if cert.exists() {
        let chain = read_certs(&cert, "create-client")?;
        let key = read_key(&dir.join(client_key(user)), "create-client")?;
        builder.with_client_auth_cert(chain, key)?
    } else {
        builder.with_no_client_auth()
    };
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(c)
}

/// The subject common name of a (verified) certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Dials TLS over TCP, checking the server's certificate against the CA and the name it
/// was dialled by.
pub struct TlsDialer {
    config: Live<ClientConfig>,
    local_ip: Option<IpAddr>,
}

impl TlsDialer {
    /// Dials with `config`, from `local_ip` when given (the chaos harness gives each node
    /// its own loopback address).
    pub fn new(config: Arc<ClientConfig>, local_ip: Option<IpAddr>) -> Self {
        Self::live(fixed(config), local_ip)
    }

    /// Dials each connection with the newest of `config`.
    pub fn live(config: Live<ClientConfig>, local_ip: Option<IpAddr>) -> Self {
        Self { config, local_ip }
    }
}

async fn connect_tcp(addr: &str, local_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local_ip.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(target).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        )
    }))
}

impl Dialer for TlsDialer {
    fn dial(&self, addr: String) -> Dialing {
        let connector = TlsConnector::from(self.config.borrow().clone());
        let local_ip = self.local_ip;
        Box::pin(async move {
            let name = ServerName::try_from(host_of(&addr).to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tcp = connect_tcp(&addr, local_ip).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok(Box::new(tls) as Box<dyn Conn>)
        })
    }
}

/// A connection that finished its TLS handshake.
pub struct Handshaken {
    /// The stream.
    pub stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// The caller's address.
    pub remote: SocketAddr,
    /// The common name of the caller's certificate, if it presented one (the CA verified it).
    pub peer: Option<String>,
}

/// Accepts connections on `listener` and hands on those whose handshake with the newest
/// of `config` succeeds. Each handshake runs on its own task for at most 10 s, so a slow or silent
/// caller holds up nobody; a failed one is logged at debug level (a plaintext client, a
/// certificate of another CA).
pub fn accept(listener: TcpListener, config: Live<ServerConfig>) -> mpsc::Receiver<Handshaken> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                a = crate::net::accept_tcp(&listener) => a,
                // The server stopped: close the port.
                () = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let peer = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(common_name);
                        let _ = tx
                            .send(Handshaken {
                                stream,
                                remote,
                                peer,
                            })
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake with {remote} failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake with {remote} timed out"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:26257"), "127.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("node-0.cairn:7000"), "node-0.cairn");
    }
}
