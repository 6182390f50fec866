//! Simulated AWS endpoints for tests and `agent-guard drill`: nothing here runs in production.
//!
//! Neither IMDS nor the lifecycle calls of the Auto Scaling API have an installable fake that
//! behaves like the real service, so these follow AWS's documented behaviour to the letter. They
//! listen on loopback only, each on its own thread and runtime, so synchronous tests and the
//! guard's own runtime can both drive them. [`fleet`] runs many real guards against them at
//! once, for the fleet benchmark and its test.

pub mod autoscaling;
pub mod elb;
pub mod fleet;
pub mod imds;
mod query;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A loopback TCP server on its own thread; stops when dropped.
pub(crate) struct SimServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds `addr` (loopback only) and serves each connection with `serve`.
    pub(crate) fn start<F, Fut>(addr: SocketAddr, name: &str, serve: F) -> io::Result<SimServer>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // IMDS's IPv6 address is let through: binding it only works where a test gave it to a
        // private network namespace's loopback (on EC2 it belongs to the Nitro card, not to the
        // instance, so the bind fails there).
        if !addr.ip().is_loopback() && addr.ip() != imds::IPV6_ADDR {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the {name} simulator serves loopback only, not {addr}"),
            ));
        }
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("sim-{name}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(err) => {
                            tracing::error!(error = %err, "simulator cannot listen");
                            return;
                        }
                    };
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, _)) = accepted {
                                    tokio::spawn(serve(stream));
                                }
                            }
                        }
                    }
                });
            })?;
        Ok(SimServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
