//! Serves an axum app on an ephemeral 127.0.0.1 port from a background thread, so that
//! synchronous tests (which run the real binary) can talk to it.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use axum::Router;
use tokio::sync::oneshot;

/// A running server; dropping it stops the server and joins its thread.
pub struct AxumThread {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AxumThread {
    pub fn start(app: Router) -> Result<AxumThread> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
            // Slow handlers may still be sleeping; do not wait for them.
            rt.shutdown_background();
        });
        Ok(AxumThread {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AxumThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
