//! Command line: subcommands for operators and developers. Without a
//! subcommand the binary is the plugin that GitLab Runner starts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::openapi::{self, ConvertOptions, IndexedKeys, Selection};
use fleeting_plugin_proxmox::simulate::{self as session, FaultMode, Network, Profile, Progress};
use fleeting_plugin_proxmox::{check, plugin, plugin_dir, runtime, status, stdout, version};

#[derive(Debug, Parser)]
#[command(name = "fleeting-plugin-proxmox", about, long_about = None, disable_version_flag = true)]
struct Cli {
    /// Print name, version, git revision and build date, then exit.
    #[arg(long, short = 'V')]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print name, version, git revision and build date (as Go plugins do).
    Version,
    /// Serve the plugin to GitLab Runner (the default without a subcommand).
    Serve,
    /// Check a plugin_config (or Runner's config.toml) against its Proxmox VE
    /// cluster: reachability, TLS, credentials, version, pool, storage,
    /// template, privileges and VMIDs. Exits 0 only when every check passes.
    Check(CheckArgs),
    /// Show the instance group as Proxmox sees it now, read-only: one row per
    /// VM of the group or its pool with a verdict (ours, impostor, foreign,
    /// seed leftover), leaked resources with their fixes, and the problems
    /// `check` finds. Exits 0 when the cluster could be read (even with
    /// problems), 1 when it could not.
    Status(StatusArgs),
    /// Convert a Proxmox VE API schema dump (apidoc.js or JSON) to OpenAPI 3.0.3.
    Openapi(OpenapiArgs),
    /// Run an autoscaling session of the real plugin against the built-in
    /// Proxmox VE simulator: scale up, connect, scale down, then summarise.
    /// Exits non-zero when an instance never ran or anything leaked.
    Simulate(SimulateArgs),
    /// Install this binary into Runner's plugin directory
    /// (`$FLEETING_PLUGIN_PATH`, default `/plugins`) as
    /// `<registry>/<repository>/<version>/plugin`, as Go plugins' `bootstrap`
    /// does for container installs. Prints the directory.
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, Args)]
struct BootstrapArgs {
    /// The OCI repository Runner's `plugin` setting names, e.g.
    /// `registry.example.com/runners/fleeting-plugin-proxmox` (a `:tag` is
    /// ignored: the binary's version names the directory).
    #[arg(value_name = "REPOSITORY", default_value = "")]
    repository: String,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// How many instances to scale up to.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 10)]
    instances: u32,
    /// How long things take in the simulated cluster.
    #[arg(long, value_enum, value_name = "PROFILE", default_value_t = Profile::Realistic)]
    profile: Profile,
    /// Faults injected into the simulated cluster.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = FaultMode::None)]
    faults: FaultMode,
    /// Simulated seconds per real second (overrides the profile's).
    #[arg(long, value_name = "FACTOR")]
    time_scale: Option<f64>,
    /// Seed for reproducible addresses, VMIDs and faults.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the summary as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Print the plugin's metrics (scraped from its metrics_listen endpoint
    /// just before Shutdown) after the summary; with --json, as `metrics`.
    #[arg(long)]
    metrics: bool,
    /// Serve the plugin's metrics and status on this address during the
    /// session (metrics_listen), e.g. 127.0.0.1:9464, for a live scrape.
    #[arg(long, value_name = "ADDRESS")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How instances get their address: DHCP reported by the guest agent, or
    /// a static pool on loopback with a template without the agent.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Network::Dhcp)]
    network: Network,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    selection: SelectionArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Print the status as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Which configurations `check` and `status` read.
#[derive(Debug, Args)]
struct SelectionArgs {
    /// plugin_config as JSON, or Runner's config.toml (every runner whose
    /// [runners.autoscaler] plugin is this one is taken).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// In a config.toml: only the [[runners]] entry with this name.
    #[arg(long, value_name = "NAME")]
    runner: Option<String>,
    /// Whether Runner brings its own credentials ([runners.autoscaler.connector_config]
    /// key_path, password, or use_static_credentials = true); the plugin
    /// generates a key, and needs a cloud-init drive, only when it does not.
    /// Overrides what config.toml says.
    #[arg(long, value_name = "BOOL")]
    use_static_credentials: Option<bool>,
}

impl From<SelectionArgs> for check::Selection {
    fn from(args: SelectionArgs) -> Self {
        Self { config: args.config, runner: args.runner, use_static_credentials: args.use_static_credentials }
    }
}

#[derive(Debug, Args)]
struct OpenapiArgs {
    /// Schema dump: `apidoc.js` as served by a PVE host at
    /// /pve-docs/api-viewer/apidoc.js, or the plain JSON array.
    dump: PathBuf,
    /// Convert the whole API instead of the operations list.
    #[arg(long, conflicts_with = "operations")]
    all: bool,
    /// Operations list (`METHOD /path` per line); defaults to the built-in
    /// copy of openapi/operations.txt.
    #[arg(long, value_name = "FILE")]
    operations: Option<PathBuf>,
    /// How to restore collapsed keys such as `net[n]`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = IndexedKeys::Expand)]
    indexed_keys: IndexedKeys,
    /// PVE release recorded in the document; defaults to the `X.Y` in a file
    /// name like `pve-9.1-apidoc.json`.
    #[arg(long, value_name = "X.Y")]
    pve_version: Option<String>,
    /// Where to write the document; standard output when absent.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run() -> ExitCode {
    // Go plugins accept the single-dash `-version` of Go's flag package, and
    // print with fmt.Println (Full's newline plus one: an empty last line).
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 2 && args[1] == "-version" {
        emit(&format!("{}\n", version::full()));
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(args);
    if cli.version {
        emit(&format!("{}\n", version::full()));
        return ExitCode::SUCCESS;
    }
    match cli.command {
        Some(Command::Version) => {
            emit(&format!("{}\n", version::full()));
            ExitCode::SUCCESS
        }
        Some(Command::Openapi(args)) => report(convert(&args)),
        Some(Command::Check(args)) => check(args),
        Some(Command::Status(args)) => show_status(args),
        Some(Command::Simulate(args)) => simulate(&args),
        Some(Command::Bootstrap(args)) => bootstrap(&args),
        Some(Command::Serve) | None => plugin::run(ProxmoxGroup::new()),
    }
}

/// Runs a command's future on the one runtime; a runtime that cannot start
/// is reported on stderr.
fn run_command<F: std::future::Future>(future: F) -> Option<F::Output> {
    match runtime::block_on(future) {
        Ok(value) => Some(value),
        Err(err) => {
            eprintln!("error: {err}");
            None
        }
    }
}

fn check(args: CheckArgs) -> ExitCode {
    let Some(outcome) = run_command(check::run(&args.selection.into())) else { return ExitCode::FAILURE };
    emit(&outcome.render());
    ExitCode::from(outcome.exit_code())
}

fn show_status(args: StatusArgs) -> ExitCode {
    let Some(report) = run_command(status::run(&args.selection.into())) else { return ExitCode::FAILURE };
    emit(&if args.json { report.to_json() } else { report.render() });
    ExitCode::from(report.exit_code())
}

fn bootstrap(args: &BootstrapArgs) -> ExitCode {
    let plugin_path = std::env::var_os(plugin_dir::PLUGIN_PATH_ENV).filter(|dir| !dir.is_empty());
    let plugin_path = plugin_path.map_or_else(|| PathBuf::from(plugin_dir::DEFAULT_PLUGIN_DIR), PathBuf::from);
    let package_version = std::env::var(plugin_dir::PACKAGE_VERSION_ENV).ok();
    let executable = match std::env::current_exe() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("error: could not find this executable's path: {err}");
            return ExitCode::FAILURE;
        }
    };
    match plugin_dir::bootstrap(
        &args.repository,
        version::VERSION,
        package_version.as_deref(),
        &plugin_path,
        &executable,
    ) {
        Ok(installed) => {
            if let Some(warning) = installed.warning {
                eprintln!("{warning}");
            }
            emit(&format!("{}\n", installed.dir.display()));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes command output to stdout. A reader that went away (`| head`)
/// ends the output quietly instead of panicking as `print!` would.
fn emit(text: &str) {
    let _ = stdout::write(text);
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn convert(args: &OpenapiArgs) -> Result<(), String> {
    let selection = if args.all {
        Selection::All
    } else {
        let list = match &args.operations {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|err| format!("could not read operations list {}: {err}", path.display()))?,
            None => openapi::DEFAULT_OPERATIONS.to_string(),
        };
        Selection::parse_list(&list).map_err(|err| err.to_string())?
    };
    let pve_version = args
        .pve_version
        .clone()
        .or_else(|| openapi::version_from_file_name(&args.dump.to_string_lossy()))
        .unwrap_or_else(|| "unknown".to_string());
    let text = std::fs::read_to_string(&args.dump)
        .map_err(|err| format!("could not read schema dump {}: {err}", args.dump.display()))?;
    let options = ConvertOptions { selection, indexed_keys: args.indexed_keys, pve_version };
    let conversion = openapi::convert(&text, &options).map_err(|err| format!("{err} (in {})", args.dump.display()))?;
    for (method, path) in &conversion.missing {
        eprintln!("note: {method} {path} is not in this schema (older PVE release); skipped");
    }
    let json = conversion.to_pretty_json();
    match &args.output {
        Some(path) => std::fs::write(path, json).map_err(|err| format!("could not write {}: {err}", path.display()))?,
        None => emit(&json),
    }
    eprintln!("converted {} operations", conversion.operation_count);
    Ok(())
}

fn simulate(args: &SimulateArgs) -> ExitCode {
    let options = session::Options {
        instances: args.instances,
        profile: args.profile,
        faults: args.faults,
        time_scale: args.time_scale,
        seed: args.seed,
        metrics: args.metrics,
        metrics_listen: args.metrics_listen,
        network: args.network,
    };
    let mut progress = Progress::for_stderr();
    session::install_logging(&progress);
    let result = runtime::block_on(session::run(&options, &mut progress));
    progress.finish();
    let result = match result {
        Ok(result) => result,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(json) => emit(&format!("{json}\n")),
                    Err(err) => eprintln!("error: could not write the summary as JSON: {err}"),
                }
            } else {
                emit(&summary.render());
                if let Some(metrics) = &summary.metrics {
                    emit(&format!("\nMetrics scraped before Shutdown:\n{metrics}"));
                }
            }
            if summary.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
