//! `metrics_listen`: one HTTP listener per plugin process (Runner starts
//! one process per `[[runners]]` entry, so each entry names its own port).
//!
//! - `GET /metrics`: the OpenMetrics text exposition;
//! - `GET /status`: a [`StatusDocument`] in JSON, which `check` and
//!   `status` read to say whether scale-up is held, why and until when.
//!
//! The port may still be held by the process Runner just replaced: binding
//! is retried in the background, with one error naming the setting, and the
//! plugin keeps serving Runner meanwhile. Metrics never stop CI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::snapshot::{StatusDocument, now_unix};

/// How long to wait before binding a taken port again.
const REBIND_AFTER: Duration = Duration::from_secs(5);

/// The OpenMetrics content type Prometheus negotiates.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The running listener; dropping it stops serving.
#[derive(Debug)]
pub struct MetricsListener {
    cancel: CancellationToken,
    /// The bound address, once bound (port 0 resolves to the real port).
    bound: tokio::sync::watch::Receiver<Option<SocketAddr>>,
}

impl MetricsListener {
    /// Starts serving `metrics` on `address` in the background.
    pub fn spawn(address: SocketAddr, metrics: Arc<Metrics>) -> Self {
        let cancel = CancellationToken::new();
        let (bound_tx, bound) = tokio::sync::watch::channel(None);
        let started_unix = now_unix();
        let app = Router::new()
            .route("/metrics", get(metrics_handler(metrics.clone())))
            .route("/status", get(status_handler(metrics, started_unix)))
            .route("/", get(|| async { "fleeting-plugin-proxmox: /metrics (OpenMetrics), /status (JSON)\n" }));
        let stop = cancel.clone();
        tokio::spawn(async move {
            let listener = tokio::select! {
                listener = bind_until_free(address) => listener,
                () = stop.cancelled() => return,
            };
            let local = listener.local_addr().unwrap_or(address);
            tracing::info!(address = %local, "serving metrics on http://{local}/metrics and status on /status");
            let _ = bound_tx.send(Some(local));
            let shutdown = stop.clone();
            if let Err(err) =
                axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
            {
                tracing::error!(address = %local, error = %err, "could not serve metrics: {err}");
            }
        });
        Self { cancel, bound }
    }

    /// The address it listens on, once bound.
    pub async fn bound(&self) -> Option<SocketAddr> {
        let mut bound = self.bound.clone();
        bound.wait_for(Option::is_some).await.ok().and_then(|address| *address)
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn bind_until_free(address: SocketAddr) -> tokio::net::TcpListener {
    let mut reported = false;
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(err) => {
                if !reported {
                    tracing::error!(
                        address = %address,
                        error = %err,
                        "could not listen on metrics_listen {address}: {err}; retrying every {} s. If another \
                         [[runners]] entry uses the same metrics_listen, give each its own port",
                        REBIND_AFTER.as_secs()
                    );
                    reported = true;
                }
                tokio::time::sleep(REBIND_AFTER).await;
            }
        }
    }
}

fn metrics_handler(metrics: Arc<Metrics>) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + 'static {
    move || {
        let body = metrics.encode();
        std::future::ready(([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response())
    }
}

fn status_handler(
    metrics: Arc<Metrics>,
    started_unix: f64,
) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + 'static {
    move || {
        let response = match metrics.snapshot() {
            Some(fleet) => {
                let document =
                    StatusDocument { plugin: crate::version::full(), pid: std::process::id(), started_unix, fleet };
                axum::Json(document).into_response()
            }
            None => (StatusCode::SERVICE_UNAVAILABLE, "the instance group is shutting down\n").into_response(),
        };
        std::future::ready(response)
    }
}
