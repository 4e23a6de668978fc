//! Listening sockets: one `SO_REUSEPORT` socket per listener and worker, so the kernel spreads
//! connections over workers and a connection stays on the worker that accepted it.

use std::net::SocketAddr;
use std::sync::Mutex;

use socket2::{Domain, Protocol, Socket, Type};
use weft_api::{ListenerKind, ListenerProtocol};

/// The sockets of one listener, one per worker; each worker takes its own once.
pub(crate) struct ListenerSockets {
    /// The configured address (as written), to tell whether an update rebinds.
    pub(crate) configured: String,
    /// The bound address (port 0 resolved).
    pub(crate) addr: SocketAddr,
    pub(crate) kind: ListenerKind,
    pub(crate) protocol: ListenerProtocol,
    sockets: Mutex<Vec<Option<std::net::TcpListener>>>,
}

impl ListenerSockets {
    /// Binds `workers` sockets to `configured`; with port 0 they share the first one's port.
    pub(crate) fn bind(listener: &weft_api::Listener, workers: usize) -> std::io::Result<Self> {
        let wanted: SocketAddr = listener
            .address
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let first = bind_one(wanted)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![Some(first)];
        for _ in 1..workers {
            sockets.push(Some(bind_one(addr)?));
        }
        Ok(Self {
            configured: listener.address.clone(),
            addr,
            kind: listener.kind,
            protocol: listener.protocol,
            sockets: Mutex::new(sockets),
        })
    }

    /// Worker `id`'s socket; `None` if it was taken already.
    pub(crate) fn take(&self, id: usize) -> Option<std::net::TcpListener> {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)?
            .take()
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
