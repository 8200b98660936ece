//! The plugin process as go-plugin's host sees it, from Rust: environment in,
//! handshake line out, gRPC over the Unix socket, clean exits. (The Go
//! conformance suite in tests/conformance drives the same binary with the
//! real host.)

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleeting_plugin_proxmox::goplugin::proto::health::HealthCheckRequest;
use fleeting_plugin_proxmox::goplugin::proto::health::health_client::HealthClient;
use fleeting_plugin_proxmox::goplugin::proto::plugin::Empty;
use fleeting_plugin_proxmox::goplugin::proto::plugin::grpc_controller_client::GrpcControllerClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

const COOKIE: (&str, &str) = ("FLEETING_INSTANCE_GROUP_PLUGIN", "4c6410b1-cb78-4962-8c76-ab936d0ea908");

struct Plugin {
    child: Child,
    socket: PathBuf,
    handshake: String,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(socket_dir: &std::path::Path) -> Plugin {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox"))
        .env(COOKIE.0, COOKIE.1)
        .env("PLUGIN_PROTOCOL_VERSIONS", "0")
        .env("PLUGIN_UNIX_SOCKET_DIR", socket_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut handshake = String::new();
    stdout.read_line(&mut handshake).unwrap();
    // Keep reading stdout in the background: anything after the handshake
    // line is a bug, which `rest_of_stdout` reveals.
    child.stdout = None;
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        assert!(rest.is_empty(), "the plugin wrote to stdout after the handshake: {rest:?}");
    });
    let fields: Vec<&str> = handshake.trim_end().split('|').collect();
    assert_eq!(fields.len(), 6, "{handshake:?}");
    Plugin { child, socket: PathBuf::from(fields[3]), handshake }
}

async fn channel(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://plugin.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the plugin did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn handshake_line_names_the_socket_in_the_requested_dir() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = start(dir.path());
    assert!(plugin.handshake.starts_with("1|0|unix|"), "{}", plugin.handshake);
    assert!(plugin.handshake.ends_with("|grpc|\n"), "no certificate without AutoMTLS: {}", plugin.handshake);
    assert!(plugin.socket.starts_with(dir.path()));
    let mut health = HealthClient::new(channel(plugin.socket.clone()).await);
    let status = health.check(HealthCheckRequest { service: "plugin".into() }).await.unwrap().into_inner();
    assert_eq!(status.status, 1, "SERVING");
    let unknown = health.check(HealthCheckRequest { service: "other".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn controller_shutdown_exits_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = start(dir.path());
    let mut controller = GrpcControllerClient::new(channel(plugin.socket.clone()).await);
    controller.shutdown(Empty {}).await.unwrap();
    drop(controller);
    let started = std::time::Instant::now();
    let status = wait_exit(&mut plugin.child, Duration::from_secs(15));
    eprintln!("exited after {:?}", started.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(!plugin.socket.exists(), "the socket file must be removed on exit");
}

#[tokio::test]
async fn sigterm_and_sigint_exit_cleanly() {
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let mut plugin = start(dir.path());
        let pid = nix::unistd::Pid::from_raw(plugin.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let status = wait_exit(&mut plugin.child, Duration::from_secs(5));
        assert!(status.success(), "{signal}: {status:?}");
        assert!(!plugin.socket.exists(), "{signal}: socket left behind");
        let mut stderr = String::new();
        plugin.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        for line in stderr.lines() {
            let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}"));
            assert!(parsed["@level"].is_string() && parsed["@message"].is_string(), "{line}");
        }
        assert!(stderr.contains(&format!("received {signal}")), "{stderr}");
    }
}

#[test]
fn version_prints_go_plugin_layout() {
    for args in [&["--version"][..], &["-version"], &["version"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox")).args(args).output().unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        // fmt.Println(v.Full()): Full's own newline plus Println's.
        assert!(text.ends_with("\n\n"), "{args:?}: {text:?}");
        let labels: Vec<&str> = text.trim_end().lines().map(|l| l.split(':').next().unwrap_or_default()).collect();
        assert_eq!(
            labels,
            ["Name", "Version", "Git revision", "Git ref", "Rust version", "Built", "OS/Arch"],
            "{args:?}: {text}"
        );
        assert!(text.starts_with("Name:         fleeting-plugin-proxmox\n"), "{text}");
    }
}

/// `--version | head -1`: a reader that is gone before the output is written
/// ends it quietly (exit 0, nothing on stderr), instead of a "Broken pipe"
/// panic.
#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    for args in [&["--version"][..], &["-version"], &["version"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox"))
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {:?} {stderr}", output.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}
