//! The accept loop: HTTP/1 and HTTP/2 connections served with hyper, bounded.
//!
//! - A connection must send a whole request head within [`HEADER_READ_TIMEOUT`] (also between
//!   requests on a kept-alive connection), so slow-header clients can't hold sockets forever.
//! - At most `max_connections` are served at once; one more is answered 503 (JSON, with
//!   `Retry-After`) and closed, rather than left hanging in the kernel's backlog.
//! - On shutdown: stop accepting, then let each connection finish its responses (streams are
//!   ended by `Lifecycle::end_streams` before the drain limit).
//!
//! Must not: look at requests (the router does that); it only owns sockets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once when the config says nothing.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Serves `router` on `listener` until `shutdown` resolves, then waits for open connections
/// to finish their responses.
pub async fn serve(listener: TcpListener, router: Router, max_connections: usize, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(refuse(stream, max_connections));
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let builder = Arc::clone(&builder);
        let conn = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            // A client that vanishes mid-request is not the server's error.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One connection too many: a complete HTTP/1.1 503 answer, then close.
async fn refuse(mut stream: tokio::net::TcpStream, max: usize) {
    let body = format!(r#"{{"error":"the server is serving its limit of {max} connections; retry shortly"}}"#);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}
