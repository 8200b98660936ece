//! The real plugin binary as Runner runs it: started with go-plugin's
//! environment, driven over fleeting's gRPC service on its Unix socket,
//! stderr (hclog JSON) kept, and killed with SIGKILL when a test says so.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleeting_plugin_proxmox::fleeting::proto::instance_group_client::InstanceGroupClient;
use fleeting_plugin_proxmox::fleeting::proto::update_response::State;
use fleeting_plugin_proxmox::fleeting::proto::{
    ConnectInfoRequest, ConnectInfoResponse, ConnectorConfig, DecreaseRequest, Empty, IncreaseRequest, InitRequest,
    Settings,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

const COOKIE: (&str, &str) = ("FLEETING_INSTANCE_GROUP_PLUGIN", "4c6410b1-cb78-4962-8c76-ab936d0ea908");

/// One running plugin process.
pub struct PluginProcess {
    child: Child,
    pub client: InstanceGroupClient<Channel>,
    stderr: Arc<Mutex<String>>,
}

impl PluginProcess {
    /// Starts the binary with `log_filter` (FLEETING_PLUGIN_PROXMOX_LOG) and
    /// connects to its socket.
    pub async fn start(socket_dir: &Path, log_filter: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox"))
            .env(COOKIE.0, COOKIE.1)
            .env("PLUGIN_PROTOCOL_VERSIONS", "0")
            .env("PLUGIN_UNIX_SOCKET_DIR", socket_dir)
            .env("FLEETING_PLUGIN_PROXMOX_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("could not start the plugin binary");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut handshake = String::new();
        stdout.read_line(&mut handshake).unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
        });
        let fields: Vec<&str> = handshake.trim_end().split('|').collect();
        assert_eq!(fields.len(), 6, "handshake line {handshake:?}");
        let socket = PathBuf::from(fields[3]);
        let channel = Endpoint::try_from("http://plugin.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
            }))
            .await
            .expect("could not connect to the plugin's socket");
        Self { child, client: InstanceGroupClient::new(channel), stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no cleanup, exactly like an OOM kill.
    pub fn kill9(mut self) -> String {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        let _ = self.child.wait();
        // Give the reader thread a moment to drain the pipe.
        std::thread::sleep(Duration::from_millis(20));
        self.stderr()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub async fn init(&mut self, config: &serde_json::Value, static_credentials: bool) -> Result<(), tonic::Status> {
        let settings = Settings {
            connector_config: Some(ConnectorConfig {
                username: "runner".into(),
                use_static_credentials: static_credentials,
                ..ConnectorConfig::default()
            }),
        };
        self.client
            .init(InitRequest { config: config.to_string().into_bytes(), settings: Some(settings) })
            .await
            .map(|_| ())
    }

    /// Init with Runner's connector_config as given.
    pub async fn init_with(
        &mut self,
        config: &serde_json::Value,
        connector: ConnectorConfig,
    ) -> Result<(), tonic::Status> {
        let settings = Settings { connector_config: Some(connector) };
        self.client
            .init(InitRequest { config: config.to_string().into_bytes(), settings: Some(settings) })
            .await
            .map(|_| ())
    }

    pub async fn update(&mut self) -> Result<Vec<(String, State)>, tonic::Status> {
        let mut stream = self.client.update(Empty {}).await?.into_inner();
        let mut states = Vec::new();
        while let Some(item) = stream.message().await? {
            states.push((item.instance.clone(), item.state()));
        }
        Ok(states)
    }

    pub async fn increase(&mut self, n: u32) -> Result<u32, tonic::Status> {
        self.client.increase(IncreaseRequest { n }).await.map(|r| r.into_inner().succeeded)
    }

    pub async fn decrease(&mut self, instances: Vec<String>) -> Result<Vec<String>, tonic::Status> {
        self.client.decrease(DecreaseRequest { instances }).await.map(|r| r.into_inner().succeeded)
    }

    pub async fn connect_info(&mut self, instance: &str) -> Result<ConnectInfoResponse, tonic::Status> {
        self.client.connect_info(ConnectInfoRequest { instance: instance.into() }).await.map(|r| r.into_inner())
    }

    pub async fn shutdown(&mut self) -> Result<(), tonic::Status> {
        self.client.shutdown(Empty {}).await.map(|_| ())
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
