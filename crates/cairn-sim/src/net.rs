//! Cairn's gRPC over turmoil's simulated TCP.

use cairn_proto::net::{Accepted, Conn, Dialer, Dialing, Incoming};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

/// Dials simulated hosts by `name:port`.
pub(crate) struct SimDialer;

impl Dialer for SimDialer {
    fn dial(&self, addr: String) -> Dialing {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as Box<dyn Conn>)
        })
    }
}

/// Listens on `port` of the current simulated host.
pub(crate) async fn listen(port: u16) -> io::Result<(Incoming, SocketAddr)> {
    let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await?;
    let local = listener.local_addr()?;
    let incoming = futures::stream::unfold(listener, move |l| async move {
        let next = l
            .accept()
            .await
            .map(|(s, remote)| Accepted::new(Box::new(s), Some(local), Some(remote)));
        Some((next, l))
    });
    Ok((Box::pin(incoming), local))
}
