//! go-plugin's housekeeping services: health (`plugin` is SERVING),
//! `GRPCController.Shutdown` and `GRPCStdio.StreamStdio`.

use std::collections::HashMap;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::proto::health::health_check_response::ServingStatus;
use super::proto::health::{HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse};
use super::proto::plugin::{Empty, StdioData};

/// The name go-plugin's host pings (`GRPCServiceName`).
pub const PLUGIN_SERVICE_NAME: &str = "plugin";

/// A one-way switch shared by everything that ends the process: the
/// controller's Shutdown, SIGTERM and SIGINT.
#[derive(Clone)]
pub struct ShutdownSignal {
    sender: watch::Sender<bool>,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self { sender: watch::channel(false).0 }
    }
}

impl ShutdownSignal {
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Resolves once [`ShutdownSignal::trigger`] was called.
    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }
}

pub struct HealthService {
    pub shutdown: ShutdownSignal,
}

fn status_of(service: &str) -> Option<ServingStatus> {
    matches!(service, "" | PLUGIN_SERVICE_NAME).then_some(ServingStatus::Serving)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl super::proto::health::health_server::Health for HealthService {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match status_of(&service) {
            Some(status) => Ok(Response::new(HealthCheckResponse { status: status as i32 })),
            None => Err(Status::not_found(format!("unknown service {service}"))),
        }
    }

    async fn list(&self, _request: Request<HealthListRequest>) -> Result<Response<HealthListResponse>, Status> {
        let statuses: HashMap<String, HealthCheckResponse> = ["", PLUGIN_SERVICE_NAME]
            .into_iter()
            .map(|name| (name.to_string(), HealthCheckResponse { status: ServingStatus::Serving as i32 }))
            .collect();
        Ok(Response::new(HealthListResponse { statuses }))
    }

    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let status = status_of(&request.into_inner().service).unwrap_or(ServingStatus::ServiceUnknown);
        let first = futures::stream::once(async move { Ok(HealthCheckResponse { status: status as i32 }) });
        let shutdown = self.shutdown.clone();
        // The status never changes while serving; the stream ends at shutdown.
        let rest = futures::stream::once(async move {
            shutdown.wait().await;
            Err(Status::unavailable("plugin is shutting down"))
        });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(first, rest))))
    }
}

pub struct ControllerService {
    pub shutdown: ShutdownSignal,
}

#[tonic::async_trait]
impl super::proto::plugin::grpc_controller_server::GrpcController for ControllerService {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::debug!("the host asked the plugin to shut down");
        self.shutdown.trigger();
        Ok(Response::new(Empty {}))
    }
}

pub struct StdioService {
    pub shutdown: ShutdownSignal,
}

#[tonic::async_trait]
impl super::proto::plugin::grpc_stdio_server::GrpcStdio for StdioService {
    type StreamStdioStream = BoxStream<StdioData>;

    /// Logs go straight to stderr as hclog JSON, so nothing is forwarded
    /// here; the stream stays open (as the host expects) until shutdown.
    async fn stream_stdio(&self, _request: Request<()>) -> Result<Response<Self::StreamStdioStream>, Status> {
        let shutdown = self.shutdown.clone();
        let stream = futures::stream::once(async move {
            shutdown.wait().await;
            None
        })
        .filter_map(futures::future::ready);
        Ok(Response::new(Box::pin(stream)))
    }
}

use futures::StreamExt as _;
