//! Connections: accept (or refuse, while the API is "unreachable"), TLS,
//! HTTP/1.1 with keep-alive, and dropping a connection without an answer
//! when a fault says so.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::SimError;
use super::simulator::Shared;

/// The service's error: hyper closes the connection without an answer.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for DropConnection {}

/// How long open connections may take to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    let acceptor = match &shared.certificate {
        Some(certificate) => Some(certificate.acceptor()?),
        None => None,
    };
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %err, "pve-sim could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if shared.is_unreachable() {
                    shared.counters.update(|c| c.refused_connections += 1);
                    drop(tcp);
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                let closed = closed.clone();
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve_connection(shared, tls, closed).await;
                            }
                        }
                        None => serve_connection(shared, tcp, closed).await,
                    }
                });
            }
        }
    }
    let _ = closing.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}

async fn serve_connection<I>(shared: Arc<Shared>, io: I, mut closed: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counted = shared.clone();
    let _open = counted.counters.connection_opened();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move { respond(shared, request).await }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let closing = async move {
        // The guard `wait_for` returns must not live across an await.
        let _ = closed.wait_for(|closing| *closing).await.map(|_| ());
    };
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = closing => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn respond(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
    if shared.is_unreachable() {
        return Err(DropConnection);
    }
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, Body::new(body));
    if request.uri().path().starts_with("/_sim/") || request.uri().path() == "/_sim" {
        return Ok(super::admin::respond(&shared, request).await);
    }
    let counted = shared.clone();
    let _in_flight = counted.counters.request_begun();
    super::api::respond(shared, request).await
}
