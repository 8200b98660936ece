//! The checks of one `plugin_config` against its cluster, in the order a
//! failure makes later ones pointless: configuration, credentials file,
//! reachability, TLS, login, version, pool, template, storage, privileges,
//! VMIDs. Later checks are skipped (and say so) when an earlier one leaves
//! nothing to talk to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;

use super::Report;
use super::input::Target;
use super::privileges::{self, AclPlace, Subject};
use super::probe::{self, Probe};
use crate::group::config::{CloneMode, GroupConfig, IgnoredKey, Parsed, PluginConfig};
use crate::group::naming::Naming;
use crate::group::placement::{Demand, Placement};
use crate::group::template::{TemplateFacts, TemplateStorage};
use crate::group::template_copy::read_node_templates;
use crate::pve::{
    ClientConfig, Credentials, ErrorKind, Fingerprint, PveClient, PveVersion, RetryPolicy, SecondFactor, Vmid,
};

/// Ranges up to this size are probed id by id (VMs the user cannot see
/// still block an id); larger ones only by the visible VMs.
const PROBE_RANGE_LIMIT: u32 = 1000;

/// Checks one configuration; the report says what passed and how to fix
/// what did not.
pub async fn check_target(target: &Target) -> Report {
    inspect_target(target).await.report
}

/// What the checks of one configuration learnt besides their report, for
/// `status` to read on from.
pub struct Inspection {
    pub report: Report,
    /// The validated config and the authenticated client, once login succeeded.
    pub connection: Option<(GroupConfig, PveClient)>,
    /// Volumes of VMIDs without a VM on the clones' storages (empty when
    /// they could not be listed: the report says why).
    pub orphaned_volumes: Vec<OrphanedVolumes>,
}

/// Runs the checks of one configuration and keeps what they found.
pub async fn inspect_target(target: &Target) -> Inspection {
    let mut report = Report::new(&target.label);
    let mut orphaned_volumes = Vec::new();
    let connection = inspect_cluster(target, &mut report, &mut orphaned_volumes).await;
    Inspection { report, connection, orphaned_volumes }
}

async fn inspect_cluster(
    target: &Target,
    report: &mut Report,
    orphaned_volumes: &mut Vec<OrphanedVolumes>,
) -> Option<(GroupConfig, PveClient)> {
    let config = check_config(target, report)?;
    let credentials = check_credentials_file(&config, report)?;
    let fingerprint = check_reachable(&config, report).await?;
    let (pve, version) = check_login(&config, credentials.clone(), fingerprint, report).await?;
    check_version(&version, report);
    check_pool(&pve, &config, report).await;
    let generate = !target.runner_brings_credentials;
    report.pass(
        "credentials for the VMs",
        if generate {
            "Runner's connector_config brings none (no key_path, password or use_static_credentials): the plugin \
             derives an ed25519 key from the credentials at Init (for a Windows template it generates a password, for \
             WinRM) and installs it with \
             cloud-init for `cloud_init_user` (Runner's `username` for the password)"
        } else {
            "Runner's own (key_path, password or use_static_credentials): handed back unchanged, username included; \
             the plugin generates and injects nothing"
        },
    );
    let template = check_template(&pve, &config, generate, report).await;
    if let Some(network) = &config.static_network {
        super::ip_pool::check_static_pool(&pve, &config, network, report).await;
    }
    if let Some(template) = &template {
        check_target_nodes(&pve, &config, template, report).await;
        check_placement(&pve, &config, template, report).await;
    }
    check_privileges(&pve, &config, &version, &credentials, template.as_ref(), generate, report).await;
    check_vmids(&pve, &config, report).await;
    if let Some(template) = &template {
        *orphaned_volumes = check_leftover_volumes(&pve, template, report).await;
    }
    super::running::check_running_plugin(&config, report).await;
    Some((config, pve))
}

fn skip_rest(report: &mut Report, reason: &str) {
    report.skip("remaining checks", format!("not run: {reason}"));
}

fn check_config(target: &Target, report: &mut Report) -> Option<GroupConfig> {
    let json = serde_json::to_vec(&target.plugin_config).unwrap_or_default();
    // Ignored keys do not stop the plugin (Init only warns), but here they
    // fail: a misspelt or foreign key is a setting that has no effect.
    let report_ignored = |report: &mut Report, ignored: &[IgnoredKey]| {
        for key in ignored {
            report.fail("plugin_config", key.problem(), key.fix());
        }
    };
    match PluginConfig::parse(&json) {
        Ok(Parsed { config, warnings }) => {
            let count = target.plugin_config.as_object().map_or(0, |o| o.len()).saturating_sub(warnings.len());
            report.pass("plugin_config", format!("{count} settings, all valid"));
            report_ignored(report, &warnings);
            if let Some(runner_max) = target.runner_max_instances
                && runner_max > u64::from(config.max_instances)
            {
                report.warn(
                    "max_instances",
                    format!(
                        "Runner's [runners.autoscaler] max_instances {runner_max} exceeds plugin_config max_instances {}; \
                         the plugin refuses instances beyond {}",
                        config.max_instances, config.max_instances
                    ),
                    "set both to the same number",
                );
            }
            Some(config)
        }
        Err(err) => {
            for problem in err.problems {
                report.fail(
                    "plugin_config",
                    problem,
                    "correct it in [runners.autoscaler.plugin_config] (keys: README, Configuration)",
                );
            }
            report_ignored(report, &err.ignored);
            skip_rest(report, "they need a valid plugin_config");
            None
        }
    }
}

fn check_credentials_file(config: &GroupConfig, report: &mut Report) -> Option<Credentials> {
    let path = &config.credentials_file_path;
    let subject = format!("credentials file {}", path.display());
    let credentials = match Credentials::load(path) {
        Ok(credentials) => credentials,
        Err(err) => {
            report.fail(
                &subject,
                err.problems.join("; "),
                "fix the file (fields: README, The credentials file); it must be readable by the runner's user",
            );
            skip_rest(report, "they need working credentials");
            return None;
        }
    };
    let description = match &credentials {
        Credentials::Token { token_id, .. } => format!("API token {token_id}"),
        Credentials::Password { userid, second_factor, .. } => match second_factor {
            SecondFactor::None => format!("password login as {userid}"),
            SecondFactor::TotpSecret(_) => format!("password login as {userid} with a TOTP secret"),
            SecondFactor::FixedOtp(_) => format!("password login as {userid} with a fixed otp"),
        },
    };
    report.pass(&subject, description);
    if let Credentials::Password { second_factor: SecondFactor::FixedOtp(_), .. } = &credentials {
        report.warn(
            &subject,
            "a fixed `otp` is valid for one login only; the next ticket renewal after a restart fails",
            "replace `otp` with `totp_secret` (the base32 secret of the user's TOTP factor), or use an API token",
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                report.warn(
                    &subject,
                    format!("others can read it (mode {mode:o})"),
                    format!("chmod 600 {} (and chown it to the runner's user)", path.display()),
                );
            }
        }
    }
    Some(credentials)
}

/// `Some(None)` for plain HTTP, `Some(Some(fingerprint))` for https.
async fn check_reachable(config: &GroupConfig, report: &mut Report) -> Option<Option<Fingerprint>> {
    let subject = format!("reach {}", config.url);
    match probe::probe(&config.url, Duration::from_secs(10)).await {
        Ok(Probe::PlainHttp) => {
            report.warn(
                &subject,
                "plain HTTP: credentials and tickets travel unencrypted",
                "use https://<host>:8006 (PVE serves the API over https)",
            );
            Some(None)
        }
        Ok(Probe::Tls { fingerprint }) => {
            report.pass(&subject, "TCP and TLS handshake");
            Some(Some(fingerprint))
        }
        Err(message) => {
            report.fail(
                &subject,
                message,
                "check `url` (PVE listens on https://<host>:8006), DNS, and firewalls between this machine and PVE",
            );
            skip_rest(report, "PVE is not reachable");
            None
        }
    }
}

async fn check_login(
    config: &GroupConfig,
    credentials: Credentials,
    fingerprint: Option<Fingerprint>,
    report: &mut Report,
) -> Option<(PveClient, PveVersion)> {
    let client_config = ClientConfig {
        request_timeout: config.request_timeout.min(Duration::from_secs(20)),
        // A preflight answers quickly: one retry, short pauses.
        retry: RetryPolicy {
            max_attempts: 2,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        },
        ..config.client_config(credentials.clone())
    };
    // The first requests: TLS trust, then authentication (a ticket login
    // for passwords, the token header otherwise).
    let connected = match PveClient::connect(client_config).await {
        Ok(pve) => pve.version().await.map(|version| (pve, version)),
        Err(err) => Err(err),
    };
    match connected {
        Ok((pve, version)) => {
            report_tls_trust(config, fingerprint, report);
            report.pass("credentials", "accepted by PVE");
            Some((pve, version))
        }
        Err(err) => {
            match err.kind() {
                ErrorKind::Tls { .. } => report_tls_failure(config, fingerprint, &err.to_string(), report),
                ErrorKind::Setup { .. } => report.fail("TLS", err.to_string(), "fix `ca_file` or `tls_fingerprint`"),
                ErrorKind::Unauthorized { .. } | ErrorKind::PermissionDenied { .. } => {
                    report_tls_trust(config, fingerprint, report);
                    report.fail("credentials", err.to_string(), credentials_fix(&credentials, &err.to_string()));
                }
                _ => report.fail(
                    "PVE API",
                    err.to_string(),
                    "check that `url` points at PVE's API (https://<host>:8006) and that pveproxy runs (systemctl status pveproxy)",
                ),
            }
            skip_rest(report, "no authenticated connection to PVE");
            None
        }
    }
}

fn report_tls_trust(config: &GroupConfig, fingerprint: Option<Fingerprint>, report: &mut Report) {
    let Some(fingerprint) = fingerprint else { return };
    if config.insecure_skip_tls_verify && config.tls_fingerprint.is_none() {
        report.warn(
            "TLS",
            format!("the certificate is NOT verified (insecure_skip_tls_verify); the server presents {fingerprint}"),
            format!(
                "pin it instead: tls_fingerprint = \"{fingerprint}\" (compare with node → System → Certificates) and remove insecure_skip_tls_verify"
            ),
        );
    } else if config.tls_fingerprint.is_some() {
        report.pass("TLS", format!("the certificate matches tls_fingerprint ({fingerprint})"));
    } else if let Some(ca_file) = &config.ca_file {
        report.pass("TLS", format!("the certificate is signed by ca_file {}", ca_file.display()));
    } else {
        report.pass("TLS", "the certificate is trusted by the system's CA roots");
    }
}

fn report_tls_failure(config: &GroupConfig, fingerprint: Option<Fingerprint>, error: &str, report: &mut Report) {
    let presents = fingerprint.map(|f| f.to_string()).unwrap_or_else(|| "<unknown>".into());
    let (detail, fix) = if let Some(pinned) = &config.tls_fingerprint {
        (
            format!("the server's certificate {presents} does not match tls_fingerprint {pinned}"),
            format!(
                "if {presents} is your PVE node's certificate (node → System → Certificates, or `pvenode cert info`), \
                 set tls_fingerprint = \"{presents}\"; if not, something else answers at {}",
                config.url
            ),
        )
    } else if let Some(ca_file) = &config.ca_file {
        (
            format!("the server's certificate ({presents}) is not signed by ca_file {}: {error}", ca_file.display()),
            format!(
                "use the cluster's CA (/etc/pve/pve-root-ca.pem) as ca_file, and connect by a name the certificate lists; \
                 or pin it: tls_fingerprint = \"{presents}\""
            ),
        )
    } else {
        (
            format!("the server's certificate ({presents}) is not trusted by the system's CA roots: {error}"),
            format!(
                "set ca_file = \"<copy of the cluster's /etc/pve/pve-root-ca.pem>\", or pin the certificate: tls_fingerprint = \"{presents}\" \
                 (compare with node → System → Certificates)"
            ),
        )
    };
    report.fail("TLS", detail, fix);
}

fn credentials_fix(credentials: &Credentials, error: &str) -> String {
    match credentials {
        Credentials::Token { token_id, .. } => {
            let user = token_id.split('!').next().unwrap_or_default();
            format!(
                "check `token_id` and `token_secret` (`pveum user token list {user}` shows the token; a lost secret means \
                 `pveum user token remove` and `add` again), and that the user and token are enabled and not expired"
            )
        }
        Credentials::Password { userid, second_factor, .. } => {
            if error.contains("second factor") {
                match second_factor {
                    SecondFactor::TotpSecret(_) => "check that `totp_secret` is the secret of this user's TOTP factor \
                                                    (re-enrol it under Datacenter → Permissions → Two Factor if unsure) and that \
                                                    this machine's clock is right (`timedatectl`)"
                        .to_string(),
                    SecondFactor::FixedOtp(_) => {
                        "a fixed `otp` is valid once; replace it with `totp_secret`, or use an API token".to_string()
                    }
                    SecondFactor::None => format!(
                        "{userid} has two-factor authentication: add its `totp_secret`, or use an API token (no second factor)"
                    ),
                }
            } else {
                format!(
                    "check `username`, `realm` and `password` of {userid}, and that the user is enabled and not expired"
                )
            }
        }
    }
}

fn check_version(version: &PveVersion, report: &mut Report) {
    if privileges::is_supported(version) {
        report.pass("PVE version", format!("{version} (supported: 7.0 to 9.x)"));
    } else if version.major < 7 {
        report.fail(
            "PVE version",
            format!("{version} is older than 7.0, which this plugin does not support"),
            "upgrade PVE to 8.x or 9.x",
        );
    } else {
        report.warn(
            "PVE version",
            format!("{version} is newer than the 9.x releases this plugin was tested with"),
            "watch the first runs closely and report problems with the PVE version",
        );
    }
}

async fn check_pool(pve: &PveClient, config: &GroupConfig, report: &mut Report) {
    let subject = format!("pool {}", config.pool);
    match pve.pool_members(&config.pool).await {
        Ok(members) => {
            let vms = members.iter().filter(|m| m.kind == "qemu").count();
            report.pass(&subject, format!("exists ({vms} VM{} in it)", if vms == 1 { "" } else { "s" }));
        }
        Err(err) if err.is_not_found() => report.fail(
            &subject,
            format!("does not exist, or the user cannot see it (Pool.Audit on /pool/{})", config.pool),
            format!(
                "pveum pool add {} --comment \"GitLab Runner instances\" (if it exists: see the privileges below)",
                config.pool
            ),
        ),
        Err(err) => report.fail(
            &subject,
            err.to_string(),
            format!("grant Pool.Audit on /pool/{} (see the privileges below)", config.pool),
        ),
    }
}

/// The template and its storage: `Some` with the storages clones write to.
pub struct TemplateOutcome {
    pub facts: TemplateFacts,
    pub storage: TemplateStorage,
    pub clone_storages: Vec<String>,
    /// Clones are linked (they stay on the template's storage).
    pub linked: bool,
    /// What one instance needs of a node.
    pub demand: Demand,
    /// The template's version as its copies record it.
    pub version: String,
    /// The nodes with a template of their own (`template_vmids`).
    pub own_template: Vec<String>,
}

async fn check_template(
    pve: &PveClient,
    config: &GroupConfig,
    generate: bool,
    report: &mut Report,
) -> Option<TemplateOutcome> {
    let id = config.template_id;
    let subject = format!("template {id}");
    let vms = match pve.cluster_vms().await {
        Ok(vms) => vms,
        Err(err) => {
            report.fail(&subject, err.to_string(), "see the privileges below");
            return None;
        }
    };
    let Some(vm) = vms.iter().find(|vm| vm.vmid == id) else {
        report.fail(
            &subject,
            format!("no such VM, or the user cannot see it (VM.Audit on /vms/{id})"),
            format!("check `template_id` (`qm list` on the nodes); if it exists, grant VM.Audit on /vms/{id} (see the privileges below)"),
        );
        return None;
    };
    let vm_config = match pve.vm_config(&vm.node, id).await {
        Ok(c) => c,
        Err(err) => {
            report.fail(&subject, err.to_string(), format!("grant VM.Audit on /vms/{id} (see the privileges below)"));
            return None;
        }
    };
    let facts = TemplateFacts::from_config(&vm.node, &vm_config, vm.template);
    for requirement in crate::group::template::judge(&facts, config, generate) {
        let aspect =
            if requirement.aspect == "source" { subject.clone() } else { format!("{subject} {}", requirement.aspect) };
        match requirement.verdict {
            Ok(how) => report.pass(aspect, how),
            Err(problem) => report.fail(aspect, problem.problem, problem.fix),
        }
    }

    // Linked clones need a template whose every disk sits on storage that
    // can clone a base volume: the engine decides `clone_mode = auto` with the
    // same reading.
    let storage = TemplateStorage::inspect(pve, &facts).await;
    for (name, err) in storage.unreadable() {
        report.fail(
            format!("storage {name}"),
            err.to_string(),
            format!("grant Datastore.AllocateSpace on /storage/{name} (see the privileges below)"),
        );
    }
    let linked =
        match crate::group::template::clone_kind(&facts, &storage, config.clone_mode, config.clone_mode_explicit) {
            Ok((linked, how)) => {
                report.pass("clone mode", how);
                linked
            }
            Err(problem) => {
                report.fail("clone mode", problem.problem, problem.fix);
                config.clone_mode == CloneMode::Linked
            }
        };
    let clone_storages: Vec<String> = match (&config.storage, linked) {
        (Some(storage), false) => vec![storage.clone()],
        _ => facts.all_storages(),
    };
    if let (Some(storage), false) = (&config.storage, linked) {
        let subject = format!("storage {storage}");
        match pve.storage_info(&facts.node, storage).await {
            Ok(info) => report.pass(&subject, format!("{} on node {}, target of full clones", info.kind, facts.node)),
            Err(err) => report.fail(
                &subject,
                err.to_string(),
                format!("check `storage` (`pvesm status` on {}); if it exists, see the privileges below", facts.node),
            ),
        }
    } else if config.storage.is_some() {
        report.pass("storage", "`storage` is ignored: linked clones stay on the template's storage");
    }
    // Init refuses a disk that cannot be grown; here it only sizes the demand.
    let grown = crate::group::template::grown_disk(&vm_config, config).ok().flatten();
    let demand = Demand::of_clone(&vm_config, &config.sizing, grown.as_deref());
    let version = crate::group::template_copy::template_version(&vm_config);
    let listing = crate::pve::ClusterListing { vms, ..Default::default() };
    let own_template = match read_node_templates(pve, config, &listing, &facts.node, generate, grown.as_deref()).await {
        Ok(sources) => {
            for source in &sources {
                report.pass(
                    format!("template {}", source.vmid),
                    format!("serves node {} ({} clones)", source.node, if source.linked { "linked" } else { "full" }),
                );
            }
            sources.into_iter().map(|source| source.node).collect()
        }
        Err(err) => {
            report.fail("template_vmids", err.to_string(), "fix `template_vmids` as the message says");
            Vec::new()
        }
    };
    Some(TemplateOutcome { facts, storage, clone_storages, linked, demand, version, own_template })
}

/// `target_nodes`: known, online, and reachable from the template's storage.
async fn check_target_nodes(pve: &PveClient, config: &GroupConfig, template: &TemplateOutcome, report: &mut Report) {
    if config.target_nodes.is_empty() {
        return;
    }
    let subject = "target_nodes";
    let nodes = crate::group::engine::inspect_target_nodes(
        pve,
        config,
        &template.facts.node,
        &template.own_template,
        &template.storage,
    );
    match nodes.await {
        Ok(findings) => {
            for problem in &findings.problems {
                report.fail(subject, problem.clone(), "fix `target_nodes` as the message says");
            }
            for node in &findings.offline {
                report.warn(
                    subject,
                    format!("{node} is offline"),
                    "clones go to the other target nodes until it is back",
                );
            }
            if findings.problems.is_empty() {
                report.pass(
                    subject,
                    format!(
                        "{} reachable for clones of template {}",
                        config.target_nodes.join(", "),
                        config.template_id
                    ),
                );
            }
        }
        Err(err) => report.fail(subject, err.to_string(), "check that the user can list the cluster's nodes"),
    }
}

/// Placement now: per candidate node, what the listing says, what binds,
/// and how many more instances fit; then whether `max_instances` fits.
async fn check_placement(pve: &PveClient, config: &GroupConfig, template: &TemplateOutcome, report: &mut Report) {
    let listing = match pve.cluster_listing().await {
        Ok(listing) => listing,
        Err(err) => {
            report.fail("placement", err.to_string(), "see the privileges below");
            return;
        }
    };
    let scheduler = config.placement.scheduler.name();
    let default_nodes =
        std::iter::once(template.facts.node.clone()).chain(template.own_template.iter().cloned()).collect();
    let placement = Placement::for_group(config, default_nodes, template.linked, template.demand);
    let naming = Naming::new(&config.group);
    let unready = check_template_copies(pve, config, template, &listing, &naming, report).await;
    placement.observe(&listing, |vm| naming.owner_of_tags(vm.vmid, &vm.tags).is_some());
    let ours = listing.vms.iter().filter(|vm| naming.owner_of_tags(vm.vmid, &vm.tags).is_some()).count() as u32;
    let mut room_total: Option<u32> = Some(0);
    let mut open_nodes = 0;
    for room in placement.survey(&unready) {
        let subject = format!("node {}", room.node);
        if room.blocked_by.is_empty() {
            open_nodes += 1;
            let fits = match room.fits {
                Some(count) => format!("room for {count} more"),
                None => "no reserve or allocation limit set, so no count".to_string(),
            };
            report.pass(&subject, format!("{}; {fits} ({})", room.summary, template.demand));
        } else {
            let why = room.blocked_by.join(", ");
            let text = if room.summary.is_empty() { why } else { format!("{why}; {}", room.summary) };
            report.warn(
                &subject,
                format!("takes no new instance now: {text}"),
                "clones go to the other target nodes; relax the binding `node_reserve_*`/`node_*_allocation_limit_percent` (or `node_policies`) if this node should take them",
            );
        }
        room_total = match (room_total, room.fits) {
            (Some(total), Some(fits)) if room.blocked_by.is_empty() => Some(total.saturating_add(fits)),
            (Some(total), _) if !room.blocked_by.is_empty() => Some(total),
            _ => None,
        };
    }
    let wanted = config.max_instances.saturating_sub(ours);
    match room_total {
        _ if open_nodes == 0 => report.fail(
            "placement",
            format!("no target node can take an instance now ({})", template.demand),
            "see the node lines above for what binds; lower the reserves or limits, or add target_nodes",
        ),
        Some(room) if room < wanted => report.warn(
            "placement",
            format!(
                "room for {room} more instances now under the reserves and limits, but max_instances allows {wanted} more (scheduler {scheduler})"
            ),
            "Increase reports the shortfall with what binds; lower max_instances or relax the reserves and limits",
        ),
        Some(room) => report.pass(
            "placement",
            format!("room for {room} more instances now; max_instances allows {wanted} more (scheduler {scheduler})"),
        ),
        None => report.pass(
            "placement",
            format!("{open_nodes} node(s) can take instances (scheduler {scheduler}); no reserve or limit caps them"),
        ),
    }
}

/// The template copies of nodes that cannot clone the template directly:
/// where each goes, and whether it is there and made of the current
/// template. Returns the nodes without a current copy (they take no clone
/// until Init has made it).
async fn check_template_copies(
    pve: &PveClient,
    config: &GroupConfig,
    template: &TemplateOutcome,
    listing: &crate::pve::ClusterListing,
    naming: &Naming,
    report: &mut Report,
) -> crate::group::placement::Unready {
    use crate::group::template_copy::{discover, plan_copies};
    let mut unready = crate::group::placement::Unready::new();
    let plans = match plan_copies(config, &template.facts, &template.storage, listing, &template.own_template) {
        Ok(plans) => plans,
        Err(problems) => {
            for problem in problems {
                report.fail("template copies", problem, "fix `target_storages` or `target_nodes` as the message says");
            }
            return unready;
        }
    };
    if plans.is_empty() {
        return unready;
    }
    let found = match discover(pve, naming, &config.pool, &config.staging.name_prefix, listing).await {
        Ok(found) => found,
        Err(err) => {
            report.fail("template copies", err.to_string(), "see the privileges below");
            return unready;
        }
    };
    for plan in &plans {
        let subject = format!("template copy {}", plan.node);
        let how = format!("{} clones from it onto {}", if plan.linked { "linked" } else { "full" }, plan.storage);
        let mine: Vec<_> = found.iter().filter(|copy| copy.marker.node == plan.node).collect();
        let current = mine.iter().find(|copy| {
            copy.is_template
                && copy.node == plan.node
                && copy.marker.source == config.template_id
                && copy.marker.version == template.version
        });
        match (current, mine.first()) {
            (Some(copy), _) => report.pass(&subject, format!("VM {} is current ({how})", copy.vmid)),
            (None, Some(copy)) => {
                unready.insert(plan.node.clone(), "its template copy is out of date".into());
                report.warn(
                    &subject,
                    format!(
                        "VM {} is {}; the plugin makes a new one and deletes it once no instance uses it",
                        copy.vmid,
                        if copy.is_template { "made of an older version of the template" } else { "a copy cut short" }
                    ),
                    "nothing to do; the node takes clones again once the new copy is ready",
                );
            }
            (None, None) => {
                unready.insert(plan.node.clone(), "it has no template copy yet".into());
                report.warn(
                    &subject,
                    format!(
                        "none yet: Init makes it (a full clone on {}, an offline migration onto {} of {}); {how}",
                        template.facts.node, plan.storage, plan.node
                    ),
                    format!(
                        "nothing to do; it takes as long as copying the template's disks, and the node takes clones once it is ready (the token needs VM.Migrate and VM.Allocate on the pool, and Datastore.AllocateSpace on {})",
                        plan.storage
                    ),
                );
            }
        }
    }
    unready
}

#[allow(clippy::too_many_arguments)]
async fn check_privileges(
    pve: &PveClient,
    config: &GroupConfig,
    version: &PveVersion,
    credentials: &Credentials,
    template: Option<&TemplateOutcome>,
    generate: bool,
    report: &mut Report,
) {
    let subject = match credentials {
        Credentials::Token { token_id, .. } => {
            Subject::Token { user: token_id.split('!').next().unwrap_or_default().to_string(), token: token_id.clone() }
        }
        Credentials::Password { userid, .. } => Subject::User(userid.clone()),
    };
    let requirements: Vec<_> = privileges::required_privileges(version)
        .into_iter()
        .filter(|r| {
            r.needed.applies(privileges::Uses {
                cloud_init: generate
                    || config.static_network.is_some()
                    || !config.nameservers.is_empty()
                    || config.searchdomain.is_some(),
                disk_resize: config.autoresize.is_some() || config.sizing.disk_mib.is_some(),
                memory: config.sizing.memory_mib.is_some(),
                cores: config.sizing.cores.is_some(),
                agent: config.agent_required,
                placement: !config.target_nodes.is_empty(),
                staging: config.staging.mode == crate::group::config::StageMode::Auto
                    && template.is_some_and(|template| {
                        !template.storage.all_shared()
                            && config.target_nodes.iter().any(|node| *node != template.facts.node)
                    }),
            })
        })
        .collect();
    let objects = |place: AclPlace| -> Vec<String> {
        match place {
            AclPlace::Pool => vec![config.pool.clone()],
            AclPlace::Template => vec![config.template_id.to_string()],
            AclPlace::Storage => template.map(|t| t.clone_storages.clone()).unwrap_or_default(),
            AclPlace::Bridge => template.map(|t| t.facts.bridges.clone()).unwrap_or_default(),
            AclPlace::Nodes => vec![String::new()],
        }
    };
    if template.is_none() {
        report.skip("privileges on storage and bridges", "the template's storage and bridges are unknown (see above)");
    }
    let mut everything: Option<BTreeMap<String, BTreeMap<String, bool>>> = None;
    for place in AclPlace::ALL {
        let wanted: Vec<_> = requirements.iter().filter(|r| r.place == place).collect();
        if wanted.is_empty() {
            continue;
        }
        for object in objects(place) {
            let path = place.path(&object);
            let held: BTreeSet<String> = match pve.permissions(Some(&path)).await {
                Ok(map) => map.into_values().flat_map(BTreeMap::into_keys).collect(),
                Err(err) => {
                    report.fail(
                        format!("privileges on {path}"),
                        err.to_string(),
                        "check that the user may read its own permissions",
                    );
                    continue;
                }
            };
            let mut missing: Vec<_> =
                wanted.iter().filter(|r| !r.satisfied_by(held.iter().map(String::as_str))).collect();
            if place == AclPlace::Bridge && !missing.is_empty() {
                // An SDN VNet sits in its own zone: /sdn/zones/<zone>/<vnet>.
                if everything.is_none() {
                    everything = pve.permissions(None).await.ok();
                }
                let suffix = format!("/{object}");
                let on_vnet = everything.iter().flatten().any(|(p, privs)| {
                    p.starts_with("/sdn/zones/") && p.ends_with(&suffix) && privs.contains_key("SDN.Use")
                });
                if on_vnet {
                    missing.clear();
                }
            }
            if missing.is_empty() {
                let names: Vec<&str> = wanted.iter().map(|r| r.privilege).collect();
                report.pass(format!("privileges on {path}"), names.join(", "));
                continue;
            }
            for requirement in missing {
                let fix = if held.is_empty() {
                    let mut fix = format!(
                        "pveum acl modify {path} --roles {} {}",
                        place.role(),
                        privileges::grantee_flags(&subject)
                    );
                    if let Some(add) = privileges::role_add_command(version, place) {
                        fix.push_str(&format!("\n(create the role first if it does not exist: {add})"));
                    }
                    fix
                } else {
                    format!(
                        "pveum role modify {} --append --privs {}\n(or add it to the role you granted on {path}; it holds: {})",
                        place.role(),
                        requirement.privilege,
                        held.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                let fix = if place == AclPlace::Bridge {
                    format!("{fix}\n(if {object} is an SDN VNet, grant on /sdn/zones/<zone>/{object} instead)")
                } else {
                    fix
                };
                report.fail(
                    format!("privilege {} on {path}", requirement.privilege),
                    format!("missing; the plugin needs it to {}", requirement.why),
                    fix,
                );
            }
        }
    }
}

/// The volumes of one VMID that has no VM config anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedVolumes {
    pub vmid: Vmid,
    /// The node whose storages hold them.
    pub node: String,
    /// Volume ids, e.g. `local-lvm:vm-300-disk-0`.
    pub volumes: Vec<String>,
}

impl OrphanedVolumes {
    pub fn problem(&self) -> String {
        format!(
            "VMID {} has no VM but volumes {}; Proxmox offers VMID {} for new VMs and every clone to it fails (the plugin skips it)",
            self.vmid,
            self.volumes.join(", "),
            self.vmid
        )
    }

    /// The commands that free them.
    pub fn fix(&self) -> String {
        self.volumes.iter().map(|volid| format!("`pvesm free {volid}`")).collect::<Vec<_>>().join(", ")
    }
}

/// Volumes on the clones' storages named for a VMID that has no VM (a node
/// crashed mid-clone): Proxmox offers that VMID again and every clone to it
/// fails. The plugin skips such a VMID and frees what its own failed clones
/// left; others are reported here with the command that frees them.
async fn check_leftover_volumes(
    pve: &PveClient,
    template: &TemplateOutcome,
    report: &mut Report,
) -> Vec<OrphanedVolumes> {
    let subject = "leftover volumes";
    let node = &template.facts.node;
    let mut leftovers: BTreeMap<Vmid, Vec<String>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut volumes_seen = 0;
    for storage in &template.clone_storages {
        match pve.storage_images(node, storage).await {
            Ok(images) => {
                volumes_seen += images.len();
                for image in images {
                    if let Some(vmid) = image.vmid {
                        leftovers.entry(vmid).or_default().push(image.volid);
                    }
                }
            }
            Err(err) => unreadable.push(format!("{storage}: {err}")),
        }
    }
    // A VMID whose config exists anywhere in the cluster is taken: its
    // volumes are a VM's. nextid tells, whatever the user may see.
    let mut orphaned = Vec::new();
    for (vmid, volumes) in leftovers {
        if pve.next_vmid(Some(vmid)).await.is_ok() {
            orphaned.push(OrphanedVolumes { vmid, node: node.clone(), volumes });
        }
    }
    for problem in &unreadable {
        report.warn(subject, format!("could not list the disk images ({problem})"), "see the privileges above");
    }
    if !orphaned.is_empty() {
        for orphan in &orphaned {
            report.warn(subject, orphan.problem(), orphan.fix());
        }
    } else if unreadable.is_empty() {
        report.pass(
            subject,
            format!(
                "none on {} among the {volumes_seen} disk images these credentials may see (volumes of a VMID without a VM are visible only with Datastore.Allocate on the storage; the plugin's log names any VMID it skips)",
                template.clone_storages.join(", ")
            ),
        );
    }
    orphaned
}

async fn check_vmids(pve: &PveClient, config: &GroupConfig, report: &mut Report) {
    let Some((first, last)) = config.vmid_range else {
        report.pass(
            "max_instances",
            format!("{}; VMIDs come from the datacenter's next-id range (no vmid_range)", config.max_instances),
        );
        return;
    };
    let subject = format!("vmid_range {first}-{last}");
    let vms = match pve.cluster_vms().await {
        Ok(vms) => vms,
        Err(err) => {
            report.fail(&subject, err.to_string(), "see the privileges above");
            return;
        }
    };
    let naming = Naming::new(&config.group);
    let in_range = |vmid: Vmid| (first.0..=last.0).contains(&vmid.0);
    let mut ours = 0u32;
    let mut foreign: Vec<Vmid> = Vec::new();
    for vm in vms.iter().filter(|vm| in_range(vm.vmid)) {
        if naming.owner_of_tags(vm.vmid, &vm.tags).is_some() {
            ours += 1;
        } else {
            foreign.push(vm.vmid);
        }
    }
    let size = last.0 - first.0 + 1;
    if size <= PROBE_RANGE_LIMIT {
        // VMs the user cannot see still take their id: ask PVE id by id.
        let visible: BTreeSet<u32> = vms.iter().map(|vm| vm.vmid.0).collect();
        let unseen: Vec<u32> = (first.0..=last.0).filter(|id| !visible.contains(id)).collect();
        let taken: Vec<Vmid> = futures::stream::iter(unseen)
            .map(|id| async move { (id, pve.next_vmid(Some(Vmid(id))).await) })
            .buffer_unordered(8)
            .filter_map(|(id, result)| async move {
                matches!(result, Err(err) if err.is_already_exists()).then_some(Vmid(id))
            })
            .collect()
            .await;
        foreign.extend(taken);
    }
    foreign.sort();
    let free = size - ours - foreign.len() as u32;
    let available = free + ours;
    let listed = |ids: &[Vmid]| {
        let mut text: Vec<String> = ids.iter().take(10).map(ToString::to_string).collect();
        if ids.len() > 10 {
            text.push(format!("… ({} in all)", ids.len()));
        }
        text.join(", ")
    };
    if foreign.is_empty() {
        report.pass(
            &subject,
            format!(
                "{free} of {size} free{}",
                if ours > 0 { format!(", {ours} used by this group") } else { String::new() }
            ),
        );
    } else {
        report.warn(
            &subject,
            format!(
                "{} id{} taken by other VMs: {}",
                foreign.len(),
                if foreign.len() == 1 { "" } else { "s" },
                listed(&foreign)
            ),
            "move the range to free ids, or move those VMs (the plugin skips taken ids)",
        );
    }
    if config.max_instances <= available {
        report.pass("max_instances", format!("{} fits vmid_range ({available} ids usable)", config.max_instances));
    } else {
        report.fail(
            "max_instances",
            format!("{} does not fit vmid_range {first}-{last}: only {available} ids are usable", config.max_instances),
            format!("widen vmid_range, lower max_instances to {available}, or free the ids {}", listed(&foreign)),
        );
    }
}
