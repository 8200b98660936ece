//! `fleeting-plugin-fake`: the real go-plugin transport and fleeting adapter
//! in front of an in-memory instance group, so the conformance suite can run
//! Runner's whole lifecycle without Proxmox. Instances are "reachable" at the
//! SSH address the test names in `plugin_config`.
//!
//! Built with `cargo build --example fleeting-plugin-fake`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::group::config::ConfigError;
use fleeting_plugin_proxmox::group::{
    ConnectInfo, ConnectorSettings, Error as GroupError, InstanceGroup, InstanceState, Partial, ProviderInfo,
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeConfig {
    /// Where instances "are": the test's SSH server.
    ssh_addr: String,
    #[serde(default = "default_max_size")]
    max_size: u32,
    /// How long an instance stays `creating`.
    #[serde(default = "default_creating_ms")]
    creating_ms: u64,
    /// How long an instance stays `deleting` before it vanishes.
    #[serde(default = "default_deleting_ms")]
    deleting_ms: u64,
    /// Makes every Update this slow (for "killed mid-call").
    #[serde(default)]
    update_delay_ms: u64,
    /// Log a line at this level on Init (for the log-visibility case).
    #[serde(default)]
    init_log_level: Option<String>,
    /// Offer Suspend/Resume (advertised as the `suspend_resume` capability).
    #[serde(default)]
    suspend: bool,
}

fn default_max_size() -> u32 {
    10
}
fn default_creating_ms() -> u64 {
    300
}
fn default_deleting_ms() -> u64 {
    300
}

#[derive(Default)]
struct Inner {
    config: Option<FakeConfig>,
    settings: ConnectorSettings,
    next: u32,
    /// id → (state, since)
    instances: BTreeMap<String, (InstanceState, Instant)>,
}

#[derive(Default)]
struct FakeGroup {
    inner: Mutex<Inner>,
}

impl FakeGroup {
    fn config(&self) -> Result<FakeConfig, GroupError> {
        self.inner.lock().unwrap().config.clone().ok_or(GroupError::NotInitialised)
    }
}

impl FakeGroup {
    fn transition(
        &self,
        ids: Vec<String>,
        from: InstanceState,
        to: InstanceState,
        verb: &'static str,
    ) -> Result<Partial<Vec<String>>, GroupError> {
        if !self.config()?.suspend {
            return Err(GroupError::NotSupported(verb));
        }
        let mut inner = self.inner.lock().unwrap();
        let mut partial: Partial<Vec<String>> = Partial::default();
        for id in ids {
            match inner.instances.get_mut(&id) {
                Some((state, _)) if *state == from => {
                    *state = to;
                    partial.succeeded.push(id);
                }
                Some(_) => partial.failures.push(GroupError::WrongPhase {
                    verb,
                    id,
                    phase: if from == InstanceState::Running { "not running" } else { "not suspended" },
                }),
                None => partial.failures.push(GroupError::NotOwned { verb, id }),
            }
        }
        Ok(partial)
    }
}

impl InstanceGroup for FakeGroup {
    async fn init(&self, config: &[u8], settings: ConnectorSettings) -> Result<ProviderInfo, GroupError> {
        let config: FakeConfig = serde_json::from_slice(config).map_err(|err| {
            GroupError::Config(ConfigError {
                problems: vec![format!("could not read plugin_config: {err}")],
                ignored: vec![],
            })
        })?;
        match config.init_log_level.as_deref() {
            Some("warn") => tracing::warn!(marker = "fake-init", "fake group initialised"),
            Some("error") => tracing::error!(marker = "fake-init", "fake group initialised"),
            Some("debug") => tracing::debug!(marker = "fake-init", "fake group initialised"),
            _ => tracing::info!(marker = "fake-init", "fake group initialised"),
        }
        let max_size = config.max_size;
        let capabilities = if config.suspend {
            vec![fleeting_plugin_proxmox::group::CAPABILITY_SUSPEND_RESUME.to_string()]
        } else {
            Vec::new()
        };
        let mut inner = self.inner.lock().unwrap();
        inner.config = Some(config);
        inner.settings = settings;
        Ok(ProviderInfo {
            id: "fake/conformance".into(),
            max_size,
            version: fleeting_plugin_proxmox::version::VERSION.into(),
            build_info: fleeting_plugin_proxmox::version::build_info(),
            capabilities,
        })
    }

    async fn update(&self) -> Result<Vec<(String, InstanceState)>, GroupError> {
        let config = self.config()?;
        if config.update_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(config.update_delay_ms)).await;
        }
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        inner.instances.retain(|_, (state, since)| {
            !(*state == InstanceState::Deleting
                && now.duration_since(*since) >= Duration::from_millis(config.deleting_ms))
        });
        for (state, since) in inner.instances.values_mut() {
            if *state == InstanceState::Creating
                && now.duration_since(*since) >= Duration::from_millis(config.creating_ms)
            {
                *state = InstanceState::Running;
                *since = now;
            }
        }
        Ok(inner.instances.iter().map(|(id, (state, _))| (id.clone(), *state)).collect())
    }

    async fn increase(&self, count: u32) -> Result<Partial<u32>, GroupError> {
        let config = self.config()?;
        let mut inner = self.inner.lock().unwrap();
        let room = config.max_size.saturating_sub(inner.instances.len() as u32);
        let accepted = count.min(room);
        for _ in 0..accepted {
            inner.next += 1;
            let id = format!("fake-{}", inner.next);
            inner.instances.insert(id, (InstanceState::Creating, Instant::now()));
        }
        let failures = if accepted < count {
            vec![GroupError::MaxInstances { requested: count, refused: count - accepted, max: config.max_size }]
        } else {
            Vec::new()
        };
        Ok(Partial { succeeded: accepted, failures })
    }

    async fn decrease(&self, ids: Vec<String>) -> Result<Partial<Vec<String>>, GroupError> {
        self.config()?;
        let mut inner = self.inner.lock().unwrap();
        let mut partial: Partial<Vec<String>> = Partial::default();
        for id in ids {
            match inner.instances.get_mut(&id) {
                Some((state, since)) => {
                    if *state != InstanceState::Deleting {
                        *state = InstanceState::Deleting;
                        *since = Instant::now();
                    }
                    partial.succeeded.push(id);
                }
                None => partial.failures.push(GroupError::NotOwned { verb: "remove", id }),
            }
        }
        Ok(partial)
    }

    async fn connect_info(&self, id: &str) -> Result<ConnectInfo, GroupError> {
        let config = self.config()?;
        let inner = self.inner.lock().unwrap();
        match inner.instances.get(id) {
            Some((InstanceState::Running, _)) => Ok(ConnectInfo {
                connector: ConnectorSettings {
                    os: if inner.settings.os.is_empty() { "linux".into() } else { inner.settings.os.clone() },
                    arch: if inner.settings.arch.is_empty() { "amd64".into() } else { inner.settings.arch.clone() },
                    protocol: if inner.settings.protocol.is_empty() {
                        "ssh".into()
                    } else {
                        inner.settings.protocol.clone()
                    },
                    ..inner.settings.clone()
                },
                external_addr: config.ssh_addr.clone(),
                internal_addr: config.ssh_addr,
                expires_unix: None,
            }),
            Some(_) => Err(GroupError::NotRunning { id: id.to_string() }),
            None => Err(GroupError::NotOwned { verb: "get connect info for", id: id.to_string() }),
        }
    }

    async fn heartbeat(&self, id: &str) -> Result<(), GroupError> {
        self.config()?;
        match self.inner.lock().unwrap().instances.get(id) {
            Some((InstanceState::Running, _)) => Ok(()),
            Some((state, _)) => Err(GroupError::Unhealthy(format!("instance {id} is {state:?}"))),
            None => Err(GroupError::Unhealthy(format!("instance {id} is gone"))),
        }
    }

    async fn suspend(&self, ids: Vec<String>) -> Result<Partial<Vec<String>>, GroupError> {
        self.transition(ids, InstanceState::Running, InstanceState::Suspended, "suspend")
    }

    async fn resume(&self, ids: Vec<String>) -> Result<Partial<Vec<String>>, GroupError> {
        self.transition(ids, InstanceState::Suspended, InstanceState::Running, "resume")
    }

    async fn shutdown(&self) -> Result<(), GroupError> {
        Ok(())
    }
}

fn main() -> ExitCode {
    fleeting_plugin_proxmox::plugin::run(FakeGroup::default())
}
