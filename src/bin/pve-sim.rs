//! `pve-sim`: the Proxmox VE simulator as a server, for out-of-process
//! tests and demos. HTTPS with a generated certificate by default; prints
//! the URL, the CA file and the certificate's SHA-256 fingerprint.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleeting_plugin_proxmox::runtime;
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, Simulator, TlsMode};

#[derive(Debug, Parser)]
#[command(name = "pve-sim", version, about = "A Proxmox VE API simulator for tests and demos")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8006")]
    listen: String,
    /// Scenario file (TOML, or JSON by extension); the built-in cluster without it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Makes MACs, addresses, UPIDs and injected faults reproducible.
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated seconds per real second (overrides the scenario).
    #[arg(long)]
    time_scale: Option<f64>,
    /// The PVE release to answer as (overrides the scenario), e.g. 8.4.2.
    #[arg(long)]
    pve_version: Option<String>,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    plain_http: bool,
    /// Serve this certificate (PEM) instead of a generated one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Where to write pve-root-ca.pem and pve-ssl.pem (default: a directory
    /// under the system's temporary directory).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Once listening, write {"url", "fingerprint", "ca_file", "pid"} as JSON here.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Print the scenario (the built-in cluster, or --scenario with the
    /// overrides applied) as JSON and exit: a starting point for your own.
    #[arg(long)]
    print_scenario: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match runtime::block_on(serve(args)).and_then(|served| served) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pve-sim: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::load(path).map_err(|err| err.to_string())?,
        None => Scenario::default(),
    };
    if let Some(seed) = args.seed {
        scenario.seed = Some(seed);
    }
    if let Some(scale) = args.time_scale {
        scenario.time_scale = scale;
    }
    if let Some(version) = &args.pve_version {
        scenario.pve_version = version.clone();
    }
    if args.print_scenario {
        let text =
            serde_json::to_string_pretty(&scenario).map_err(|err| format!("could not print the scenario: {err}"))?;
        // The scenario is this command's output.
        #[allow(clippy::print_stdout)]
        {
            println!("{text}");
        }
        return Ok(());
    }
    let tls = match (args.plain_http, args.cert, args.key) {
        (true, _, _) => TlsMode::Plain,
        (false, Some(certificate), Some(key)) => TlsMode::Files { certificate, key },
        _ => TlsMode::SelfSigned,
    };
    let cert_dir = match (&tls, args.cert_dir) {
        (TlsMode::Plain, _) => None,
        (_, Some(dir)) => Some(dir),
        (_, None) => Some(std::env::temp_dir().join(format!("pve-sim-{}", std::process::id()))),
    };
    let version = scenario.pve_version.clone();
    let config = SimConfig { scenario, tls, cert_dir };
    let simulator = Simulator::new(config).map_err(|err| err.to_string())?;
    let ca_file = simulator.write_certificate().map_err(|err| err.to_string())?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|err| format!("could not listen on {}: {err}", args.listen))?;
    let address = listener.local_addr().map_err(|err| format!("could not read the listening address: {err}"))?;
    let url = format!("{}://{address}", if simulator.fingerprint().is_some() { "https" } else { "http" });

    println!("pve-sim: Proxmox VE {version} simulator listening on {url} (API {url}/api2/json, admin {url}/_sim/)");
    if let Some(ca_file) = &ca_file {
        println!("pve-sim: CA certificate: {}", ca_file.display());
    }
    if let Some(fingerprint) = simulator.fingerprint() {
        println!("pve-sim: certificate SHA-256 fingerprint: {fingerprint}");
    }
    if let Some(path) = &args.ready_file {
        let ready = serde_json::json!({
            "url": url,
            "fingerprint": simulator.fingerprint(),
            "ca_file": ca_file,
            "pid": std::process::id(),
        });
        let partial = path.with_extension("partial");
        std::fs::write(&partial, ready.to_string())
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|err| format!("could not write the ready file {}: {err}", path.display()))?;
    }
    simulator.serve(listener, shutdown_signal()).await.map_err(|err| err.to_string())?;
    println!("pve-sim: stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
