//! proto ⇄ domain conversions, one function per message.

use std::time::Duration;

use prost::Message as _;
use tonic::{Code, Status};

use super::proto;
use super::proto::update_response::State;
use crate::group::{ConnectInfo, ConnectorSettings, Error as GroupError, InstanceState, ProviderInfo};

/// Go `time.Duration` (signed nanoseconds) to `Duration`; negatives are 0.
fn duration(nanos: i64) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

pub fn connector_settings(config: proto::ConnectorConfig) -> ConnectorSettings {
    ConnectorSettings {
        os: config.os,
        arch: config.arch,
        protocol: config.protocol,
        protocol_port: u16::try_from(config.protocol_port).unwrap_or(0),
        username: config.username,
        password: config.password,
        key: config.key,
        use_static_credentials: config.use_static_credentials,
        keepalive: duration(config.keepalive),
        timeout: duration(config.timeout),
    }
}

fn connector_config(settings: ConnectorSettings) -> proto::ConnectorConfig {
    proto::ConnectorConfig {
        os: settings.os,
        arch: settings.arch,
        protocol: settings.protocol,
        username: settings.username,
        password: settings.password,
        key: settings.key,
        use_static_credentials: settings.use_static_credentials,
        keepalive: nanos(settings.keepalive),
        timeout: nanos(settings.timeout),
        protocol_port: i64::from(settings.protocol_port),
    }
}

pub fn init_response(info: ProviderInfo) -> proto::InitResponse {
    proto::InitResponse {
        id: info.id,
        max_size: info.max_size,
        version: info.version,
        build_info: info.build_info,
        capabilities: info.capabilities,
    }
}

pub fn state(state: InstanceState) -> State {
    match state {
        InstanceState::Creating => State::Creating,
        InstanceState::Running => State::Running,
        InstanceState::Deleting => State::Deleting,
        InstanceState::Deleted => State::Deleted,
        InstanceState::Timeout => State::Timeout,
        InstanceState::Suspending => State::Suspending,
        InstanceState::Suspended => State::Suspended,
        InstanceState::Resuming => State::Resuming,
    }
}

/// `connector` is always set: the Go host dereferences it unchecked.
pub fn connect_info_response(info: ConnectInfo) -> proto::ConnectInfoResponse {
    proto::ConnectInfoResponse {
        connector: Some(connector_config(info.connector)),
        external_addr: info.external_addr,
        internal_addr: info.internal_addr,
        expires: info.expires_unix.unwrap_or(0),
    }
}

/// `google.rpc.Status`, the payload of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The domain's failures worded once, for the log and the wire.
pub fn failure_messages(failures: &[GroupError]) -> Vec<String> {
    failures.iter().map(ToString::to_string).collect()
}

/// A partly failed Suspend/Resume, encoded as fleeting's Go server does:
/// UNKNOWN with the error text, and the succeeded list as a status detail.
/// The code inside the details must equal the status code, or grpc-go
/// replaces the whole status with INTERNAL.
pub fn partial_failure<M: prost::Message>(type_name: &str, succeeded: &M, failures: &[GroupError]) -> Status {
    let message = failure_messages(failures).join("; ");
    let details = RpcStatus {
        code: Code::Unknown as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value: succeeded.encode_to_vec(),
        }],
    };
    Status::with_details(Code::Unknown, message, details.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_nanoseconds() {
        let settings = connector_settings(proto::ConnectorConfig {
            keepalive: 30_000_000_000,
            timeout: -5,
            protocol_port: 2222,
            use_static_credentials: true,
            ..Default::default()
        });
        assert_eq!(settings.keepalive, Duration::from_secs(30));
        assert_eq!(settings.timeout, Duration::ZERO);
        assert_eq!(settings.protocol_port, 2222);
        let back = connector_config(settings);
        assert_eq!(back.keepalive, 30_000_000_000);
        assert!(back.use_static_credentials);
    }

    #[test]
    fn partial_failures_carry_the_succeeded_list_in_details() {
        let status = partial_failure(
            "proto.SuspendResponse",
            &proto::SuspendResponse { succeeded: vec!["a".into()] },
            &[GroupError::NotOwned { verb: "suspend", id: "b".into() }],
        );
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(status.message(), "could not suspend instance b: this group does not own it");
        let details = RpcStatus::decode(status.details()).unwrap();
        assert_eq!(details.code, Code::Unknown as i32);
        assert_eq!(details.details[0].type_url, "type.googleapis.com/proto.SuspendResponse");
        let inner = proto::SuspendResponse::decode(details.details[0].value.as_slice()).unwrap();
        assert_eq!(inner.succeeded, ["a"]);
    }
}
