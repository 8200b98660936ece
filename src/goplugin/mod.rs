//! The go-plugin transport room: everything hashicorp/go-plugin's host
//! demands of a plugin process, and nothing about fleeting or Proxmox.
//!
//! [`serve`] checks the handshake environment, binds the Unix socket,
//! registers health, controller, stdio and reflection next to the
//! application's services, prints the handshake line (the only thing this
//! process ever writes to stdout) and serves until the host's
//! `GRPCController.Shutdown`, SIGTERM or SIGINT; in-flight calls finish first.

pub mod handshake;
mod inflight;
pub mod listener;
pub mod log;
pub mod proto;
pub mod services;
pub mod tls;

use std::time::Duration;

use futures::StreamExt as _;
use tonic::service::Routes;
use tonic::transport::Server;

pub use handshake::{HandshakeEnv, HandshakeError};
pub use services::ShutdownSignal;

/// How long in-flight calls may run after a shutdown request. go-plugin's
/// host kills the process 2 s after its Shutdown call, so the plugin ends
/// itself before that.
const GRACE_PERIOD: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Socket(String),
    #[error("could not set up AutoMTLS: {0}")]
    Tls(String),
    #[error("could not serve gRPC: {0}")]
    Serve(String),
}

/// Serves `app` (the plugin's own gRPC services) to the go-plugin host that
/// started this process.
pub async fn serve(handshake: HandshakeEnv, app: Routes, shutdown: ShutdownSignal) -> Result<(), Error> {
    if handshake.multiplex_requested {
        tracing::warn!("the host asked for gRPC broker multiplexing, which this plugin does not offer");
    }
    // `socket` lives until the end of this function and removes its file then.
    let mut socket = listener::bind(handshake.socket_dir.as_deref(), handshake.socket_group.as_deref())?;
    let auto_mtls = handshake.client_cert_pem.as_deref().map(tls::AutoMtls::new).transpose()?;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| Error::Serve(format!("could not set up reflection: {err}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|err| Error::Serve(format!("could not set up reflection: {err}")))?;
    let in_flight = inflight::InFlight::default();
    let router = Server::builder()
        .layer(in_flight.clone())
        .add_routes(app)
        .add_service(proto::health::health_server::HealthServer::new(services::HealthService {
            shutdown: shutdown.clone(),
        }))
        .add_service(proto::plugin::grpc_controller_server::GrpcControllerServer::new(services::ControllerService {
            shutdown: shutdown.clone(),
        }))
        .add_service(proto::plugin::grpc_stdio_server::GrpcStdioServer::new(services::StdioService {
            shutdown: shutdown.clone(),
        }))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    // Before the handshake line: a signal right after it must already count.
    spawn_signal_handlers(shutdown.clone());
    let line = handshake::handshake_line(
        handshake.app_protocol_version,
        &socket.path,
        auto_mtls.as_ref().map(|m| m.server_cert_der.as_slice()),
    );
    // The handshake line: the first and only output on stdout.
    crate::stdout::write(&line).map_err(|err| Error::Serve(format!("could not write the handshake line: {err}")))?;
    tracing::debug!(socket = %socket.path.display(), tls = auto_mtls.is_some(), "plugin serving");

    let stop = shutdown.clone();
    let stopped = async move { stop.wait().await };
    let listener = socket.take_listener();
    let serving = async move {
        match auto_mtls {
            None => {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
            Some(mtls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(mtls.config);
                let incoming = tls_incoming(listener, acceptor);
                router.serve_with_incoming_shutdown(incoming, stopped).await
            }
        }
    };
    tokio::pin!(serving);
    // After a shutdown request the process ends as soon as no call is in
    // progress (idle connections do not count), or after the grace period.
    let drained = async {
        shutdown.wait().await;
        if tokio::time::timeout(GRACE_PERIOD, in_flight.idle()).await.is_err() {
            tracing::warn!("calls still in progress {} ms after shutdown; exiting anyway", GRACE_PERIOD.as_millis());
        }
    };
    tokio::select! {
        result = &mut serving => result.map_err(|err| Error::Serve(err.to_string()))?,
        () = drained => {
            // Let the last replies (e.g. to Shutdown itself) reach the wire.
            let _ = tokio::time::timeout(Duration::from_millis(100), &mut serving).await;
        }
    }
    Ok(())
}

/// Accepts TLS connections; a failed handshake drops that connection only.
fn tls_incoming(
    listener: tokio::net::UnixListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl futures::Stream<Item = Result<tls::TlsConnection, std::io::Error>> {
    futures::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => return Some((Err(err), (listener, acceptor))),
            };
            match acceptor.accept(stream).await {
                Ok(tls) => return Some((Ok(tls::TlsConnection(tls)), (listener, acceptor))),
                Err(err) => tracing::warn!(error = %err, "rejected a TLS connection on the plugin socket"),
            }
        }
    })
    .boxed()
}

/// SIGTERM and SIGINT end the plugin gracefully, like the host's Shutdown.
fn spawn_signal_handlers(shutdown: ShutdownSignal) {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, name) in [(SignalKind::terminate(), "SIGTERM"), (SignalKind::interrupt(), "SIGINT")] {
        let Ok(mut stream) = signal(kind) else { continue };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if stream.recv().await.is_some() {
                tracing::info!("received {name}; finishing in-flight calls, then exiting");
                shutdown.trigger();
            }
        });
    }
}
