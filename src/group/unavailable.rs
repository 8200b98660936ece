//! The instance group this build serves until the Proxmox provisioning
//! engine lands: it checks that `plugin_config` is a JSON object and then
//! refuses Init with a clear message, so Runner fails fast instead of
//! waiting for instances that never come.

use super::{ConnectInfo, ConnectorSettings, GroupError, InstanceGroup, InstanceState, Partial, ProviderInfo};

pub struct EngineUnavailable;

const MESSAGE: &str = "could not initialise the Proxmox instance group: this build of fleeting-plugin-proxmox \
                       does not contain the provisioning engine yet";

impl InstanceGroup for EngineUnavailable {
    async fn init(&self, config: &[u8], _settings: ConnectorSettings) -> Result<ProviderInfo, GroupError> {
        match serde_json::from_slice::<serde_json::Value>(config) {
            Ok(serde_json::Value::Object(_)) => Err(GroupError::Failed(MESSAGE.into())),
            Ok(_) => Err(GroupError::Failed("could not read plugin_config: it must be a table of settings".into())),
            Err(err) => Err(GroupError::Failed(format!("could not read plugin_config: not valid JSON ({err})"))),
        }
    }

    async fn update(&self) -> Result<Vec<(String, InstanceState)>, GroupError> {
        Err(GroupError::NotInitialised)
    }

    async fn increase(&self, _count: u32) -> Result<Partial<u32>, GroupError> {
        Err(GroupError::NotInitialised)
    }

    async fn decrease(&self, _ids: Vec<String>) -> Result<Partial<Vec<String>>, GroupError> {
        Err(GroupError::NotInitialised)
    }

    async fn connect_info(&self, _id: &str) -> Result<ConnectInfo, GroupError> {
        Err(GroupError::NotInitialised)
    }

    async fn heartbeat(&self, _id: &str) -> Result<(), GroupError> {
        Err(GroupError::NotInitialised)
    }

    async fn suspend(&self, _ids: Vec<String>) -> Result<Partial<Vec<String>>, GroupError> {
        Err(GroupError::NotSupported("suspend"))
    }

    async fn resume(&self, _ids: Vec<String>) -> Result<Partial<Vec<String>>, GroupError> {
        Err(GroupError::NotSupported("resume"))
    }

    async fn shutdown(&self) -> Result<(), GroupError> {
        Ok(())
    }
}
