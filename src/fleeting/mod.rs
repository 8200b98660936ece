//! The fleeting adapter room: the only code that sees fleeting's protobuf
//! types. It turns each `proto.InstanceGroup` call into one call of the
//! domain's [`InstanceGroup`] and converts once in each direction.
//!
//! Errors cross the wire the way fleeting's Go server encodes them (status
//! UNKNOWN with the error text; partial Suspend/Resume results in the status
//! details; UNIMPLEMENTED where the group lacks an optional call, which the
//! host treats as "healthy" / "not supported"), so a Runner cannot tell this
//! plugin from a Go one.

mod convert;
pub mod proto;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::Stream;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::group::{self, InstanceGroup};
use proto::instance_group_server::InstanceGroupServer;

/// Serves `proto.InstanceGroup` for one domain group.
pub struct FleetingService<G> {
    group: Arc<G>,
    /// Set by the first successful Init; every other call needs it.
    initialised: AtomicBool,
    /// The plugin config of the last successful Init. fleeting's host sends
    /// the config only with its first Init, so a later Init reuses it.
    config: Mutex<Option<Vec<u8>>>,
}

impl<G: InstanceGroup> FleetingService<G> {
    pub fn new(group: G) -> Self {
        Self { group: Arc::new(group), initialised: AtomicBool::new(false), config: Mutex::new(None) }
    }

    /// The gRPC service, with message limits as large as the Go host's.
    pub fn into_server(self) -> InstanceGroupServer<Self> {
        InstanceGroupServer::new(self).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX)
    }

    fn require_init(&self) -> Result<(), Status> {
        if self.initialised.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::failed_precondition(group::Error::NotInitialised.to_string()))
        }
    }
}

/// fleeting's Go server sends every handler error as UNKNOWN with its text.
fn to_status(err: group::Error) -> Status {
    match err {
        group::Error::NotInitialised => Status::failed_precondition(err.to_string()),
        group::Error::NotSupported(_) => Status::unimplemented(err.to_string()),
        other => Status::unknown(other.to_string()),
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<proto::UpdateResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<G: InstanceGroup> proto::instance_group_server::InstanceGroup for FleetingService<G> {
    async fn init(&self, request: Request<proto::InitRequest>) -> Result<Response<proto::InitResponse>, Status> {
        let request = request.into_inner();
        let mut remembered = self.config.lock().await;
        let config =
            if request.config.is_empty() { remembered.clone().unwrap_or_default() } else { request.config.clone() };
        let settings =
            convert::connector_settings(request.settings.and_then(|s| s.connector_config).unwrap_or_default());
        match self.group.init(&config, settings).await {
            Ok(info) => {
                *remembered = Some(config);
                self.initialised.store(true, Ordering::Release);
                tracing::info!(id = %info.id, max_size = info.max_size, "instance group initialised");
                Ok(Response::new(convert::init_response(info)))
            }
            Err(err) => {
                tracing::error!(error = %err, "could not initialise the instance group");
                Err(to_status(err))
            }
        }
    }

    type UpdateStream = UpdateStream;

    async fn update(&self, _request: Request<proto::Empty>) -> Result<Response<Self::UpdateStream>, Status> {
        self.require_init()?;
        let instances = self.group.update().await.map_err(to_status)?;
        let messages = instances
            .into_iter()
            .map(|(instance, state)| Ok(proto::UpdateResponse { instance, state: convert::state(state) as i32 }));
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn increase(
        &self,
        request: Request<proto::IncreaseRequest>,
    ) -> Result<Response<proto::IncreaseResponse>, Status> {
        self.require_init()?;
        let wanted = request.into_inner().n;
        let partial = self.group.increase(wanted).await.map_err(to_status)?;
        // grpc drops the reply of a failed call, so a partial success is
        // reported as success (the host then counts it) and logged here.
        let failures = convert::failure_messages(&partial.failures);
        if partial.succeeded == 0 && !failures.is_empty() {
            return Err(Status::unknown(failures.join("; ")));
        }
        for failure in &failures {
            tracing::warn!(requested = wanted, accepted = partial.succeeded, "{failure}");
        }
        Ok(Response::new(proto::IncreaseResponse { succeeded: partial.succeeded }))
    }

    async fn decrease(
        &self,
        request: Request<proto::DecreaseRequest>,
    ) -> Result<Response<proto::DecreaseResponse>, Status> {
        self.require_init()?;
        let instances = request.into_inner().instances;
        if instances.is_empty() {
            return Ok(Response::new(proto::DecreaseResponse { succeeded: Vec::new() }));
        }
        let partial = self.group.decrease(instances).await.map_err(to_status)?;
        let failures = convert::failure_messages(&partial.failures);
        if partial.succeeded.is_empty() && !failures.is_empty() {
            return Err(Status::unknown(failures.join("; ")));
        }
        for failure in &failures {
            tracing::warn!("{failure}");
        }
        Ok(Response::new(proto::DecreaseResponse { succeeded: partial.succeeded }))
    }

    async fn connect_info(
        &self,
        request: Request<proto::ConnectInfoRequest>,
    ) -> Result<Response<proto::ConnectInfoResponse>, Status> {
        self.require_init()?;
        let info = self.group.connect_info(&request.into_inner().instance).await.map_err(to_status)?;
        Ok(Response::new(convert::connect_info_response(info)))
    }

    async fn heartbeat(&self, request: Request<proto::HeartbeatRequest>) -> Result<Response<proto::Empty>, Status> {
        self.require_init()?;
        self.group.heartbeat(&request.into_inner().instance).await.map_err(to_status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn suspend(
        &self,
        request: Request<proto::SuspendRequest>,
    ) -> Result<Response<proto::SuspendResponse>, Status> {
        self.require_init()?;
        let partial = self.group.suspend(request.into_inner().instances).await.map_err(to_status)?;
        if partial.failures.is_empty() {
            return Ok(Response::new(proto::SuspendResponse { succeeded: partial.succeeded }));
        }
        Err(convert::partial_failure(
            "proto.SuspendResponse",
            &proto::SuspendResponse { succeeded: partial.succeeded },
            &partial.failures,
        ))
    }

    async fn resume(&self, request: Request<proto::ResumeRequest>) -> Result<Response<proto::ResumeResponse>, Status> {
        self.require_init()?;
        let partial = self.group.resume(request.into_inner().instances).await.map_err(to_status)?;
        if partial.failures.is_empty() {
            return Ok(Response::new(proto::ResumeResponse { succeeded: partial.succeeded }));
        }
        Err(convert::partial_failure(
            "proto.ResumeResponse",
            &proto::ResumeResponse { succeeded: partial.succeeded },
            &partial.failures,
        ))
    }

    async fn shutdown(&self, _request: Request<proto::Empty>) -> Result<Response<proto::Empty>, Status> {
        if self.initialised.load(Ordering::Acquire) {
            self.group.shutdown().await.map_err(to_status)?;
        }
        Ok(Response::new(proto::Empty {}))
    }
}
