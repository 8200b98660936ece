//! The plugin process: logging, the handshake environment, the runtime, and
//! the fleeting service for one instance group on the go-plugin transport.

use std::process::ExitCode;

use tracing_subscriber::prelude::*;

use crate::fleeting::FleetingService;
use crate::goplugin::{self, HandshakeEnv, HandshakeError, ShutdownSignal};
use crate::group::InstanceGroup;

/// The environment variable that sets the log filter (`info` by default;
/// e.g. `debug` shows every PVE request).
pub const LOG_ENV: &str = "FLEETING_PLUGIN_PROXMOX_LOG";

/// Runs `group` as a fleeting plugin until the host shuts it down.
pub fn run<G: InstanceGroup>(group: G) -> ExitCode {
    let handshake = match HandshakeEnv::from_process() {
        Ok(handshake) => handshake,
        Err(HandshakeError::NotStartedByHost) => {
            // go-plugin's own words, on stderr, and exit status 1.
            eprint!("{}", goplugin::handshake::NOT_A_HOST_MESSAGE);
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry().with(goplugin::log::HclogLayer::stderr().with_filter(filter)).init();

    // Background work of the group does not hold the process open (see `runtime`).
    let result = crate::runtime::block_on(async move {
        let routes = tonic::service::Routes::new(FleetingService::new(group).into_server());
        goplugin::serve(handshake, routes, ShutdownSignal::default()).await
    });
    match result.and_then(|served| served.map_err(|err| err.to_string())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
