//! The Grafana dashboard (docs/grafana-dashboard.json) and the alert rules
//! (docs/prometheus-alerts.yml) against the metrics the plugin really
//! exposes: a `simulate` session with a flaky cluster runs in this process
//! and its `metrics_listen` endpoint is scraped while it works, so every
//! `fleeting_proxmox_*` name an expression uses must be a family of that
//! exposition (with the suffix its type gives samples), and every label a
//! selector, a `by (…)` clause or a legend uses must be one its samples carry.
//! Renaming a metric or a label without updating docs/ fails here.
//!
//! Families the flaky session never records (ticket events with an API
//! token, refusals, takeovers of a seed plugin) are recorded once through
//! the public recording API of a second `Metrics`, so their names and labels
//! still come from src/telemetry/metrics.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleeting_plugin_proxmox::pve::{RequestObserver, TicketEvent};
use fleeting_plugin_proxmox::simulate::{self, FaultMode, Options, Profile, Progress};
use fleeting_plugin_proxmox::telemetry::metrics::FleetSource;
use fleeting_plugin_proxmox::telemetry::snapshot::InstanceCount;
use fleeting_plugin_proxmox::telemetry::{FleetSnapshot, Metrics, ProvisionPhase, TemplateCopyState};

/// Labels Prometheus attaches to every scraped series from the target.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// What one or more expositions declare: family types, and the label names
/// each sample name carries.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name (as in `# TYPE`) to its type.
    families: BTreeMap<String, String>,
    /// Sample name to every label name seen on it.
    samples: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    self.families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (name, labels) = parse_sample(line);
                self.samples.entry(name).or_default().extend(labels);
            }
        }
    }

    /// The family a sample name belongs to, given the suffixes its type adds.
    fn family_of(&self, sample: &str) -> Option<&str> {
        let candidates: [(&str, &[&str]); 5] = [
            ("", &["gauge", "unknown"]),
            ("_total", &["counter"]),
            ("_bucket", &["histogram"]),
            ("_sum", &["histogram", "summary"]),
            ("_count", &["histogram", "summary"]),
        ];
        let info =
            sample.strip_suffix("_info").filter(|family| self.families.get(*family).is_some_and(|t| t == "info"));
        if let Some(family) = info {
            return Some(self.families.get_key_value(family)?.0.as_str());
        }
        candidates.iter().find_map(|(suffix, kinds)| {
            let family = sample.strip_suffix(suffix)?;
            let (name, kind) = self.families.get_key_value(family)?;
            kinds.contains(&kind.as_str()).then_some(name.as_str())
        })
    }

    /// Families whose name starts with `fleeting_proxmox_` and that have a sample.
    fn sampled_families(&self) -> BTreeSet<String> {
        self.samples.keys().filter_map(|sample| self.family_of(sample)).map(str::to_string).collect()
    }
}

/// `name{a="x",b="y"} 1` → (`name`, [`a`, `b`]).
fn parse_sample(line: &str) -> (String, Vec<String>) {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..end].to_string();
    let mut labels = Vec::new();
    if line[end..].starts_with('{') {
        let mut chars = line[end + 1..].chars();
        let mut label = String::new();
        while let Some(c) = chars.next() {
            match c {
                '}' => break,
                ',' | ' ' => {}
                '=' => {
                    labels.push(std::mem::take(&mut label));
                    // The quoted value, with backslash escapes.
                    assert_eq!(chars.next(), Some('"'), "a quoted label value in {line:?}");
                    while let Some(v) = chars.next() {
                        match v {
                            '\\' => {
                                chars.next();
                            }
                            '"' => break,
                            _ => {}
                        }
                    }
                }
                _ => label.push(c),
            }
        }
    }
    (name, labels)
}

/// One HTTP GET on loopback, the body as text.
fn scrape(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Expositions of a flaky `simulate` session: scraped every 50 ms while it
/// runs (instances by phase exist only then), and the final one.
fn flaky_session_expositions() -> Vec<String> {
    let address = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut texts = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if let Some(text) = scrape(address) {
                    texts.push(text);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            texts
        })
    };
    let options = Options {
        instances: 5,
        profile: Profile::Short,
        faults: FaultMode::Flaky,
        seed: Some(3),
        metrics: true,
        metrics_listen: Some(address),
        ..Options::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let summary = runtime.block_on(simulate::run(&options, &mut Progress::quiet())).expect("the session runs");
    done.store(true, Ordering::SeqCst);
    let mut texts = scraper.join().expect("the scraper");
    assert!(summary.problems().is_empty(), "{:?}", summary.problems());
    assert!(texts.len() >= 3, "the listener answered {} scrapes during the session", texts.len());
    texts.push(summary.metrics.expect("--metrics scrapes before Shutdown"));
    texts
}

struct FixedFleet(FleetSnapshot);

impl FleetSource for FixedFleet {
    fn snapshot(&self) -> FleetSnapshot {
        self.0.clone()
    }
}

/// One sample of every family, through the same recording calls the engine
/// and the PVE client make.
fn one_of_each() -> String {
    let metrics = Metrics::new("dashboard-test");
    let fleet: Arc<dyn FleetSource> = Arc::new(FixedFleet(FleetSnapshot {
        group: "dashboard-test".into(),
        max_instances: 3,
        instances: vec![InstanceCount { phase: "creating".into(), node: "pve1".into(), count: 1 }],
        oldest_in_phase_seconds: [("creating".to_string(), 12.0)].into_iter().collect(),
        template_copies: vec![TemplateCopyState {
            node: "pve2".into(),
            state: "failed".into(),
            vmid: None,
            staging_seconds: None,
            reason: Some("could not migrate the copy: node pve2 is offline".into()),
        }],
        retired_template_copies: 1,
        ..FleetSnapshot::default()
    }));
    metrics.set_source(Arc::downgrade(&fleet));
    metrics.phase_done(ProvisionPhase::Total, Duration::from_secs(30));
    metrics.provisioned();
    metrics.failure("clone", "task_failed");
    metrics.requested(2);
    metrics.refused("held", 1);
    metrics.adopted();
    metrics.half_provisioned_removed();
    metrics.taken_over("deleted");
    metrics.removed();
    metrics.removal_failed();
    metrics.vmid_quarantined();
    metrics.update_took(Duration::from_millis(3));
    metrics.request("get_cluster_resources", Some(200), Duration::from_millis(4));
    metrics.retry("get_cluster_resources");
    metrics.ticket(TicketEvent::Login);
    metrics.encode()
}

/// What the docs may use: families from the session, and for the families
/// it never sampled, those of [`one_of_each`].
struct Known {
    exposition: Exposition,
    supplemented: BTreeSet<String>,
}

fn known_metrics() -> &'static Known {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut session = Exposition::default();
        for text in flaky_session_expositions() {
            session.add(&text);
        }
        let sampled = session.sampled_families();
        for family in [
            "fleeting_proxmox_build",
            "fleeting_proxmox_instances",
            "fleeting_proxmox_oldest_instance_in_phase_seconds",
            "fleeting_proxmox_provision_phase_duration_seconds",
            "fleeting_proxmox_provision_failures",
            "fleeting_proxmox_pve_requests",
            "fleeting_proxmox_pve_request_duration_seconds",
            "fleeting_proxmox_pve_retries",
        ] {
            assert!(sampled.contains(family), "the flaky session recorded {family}; it has {sampled:?}");
        }
        let mut each = Exposition::default();
        each.add(&one_of_each());
        let mut supplemented = BTreeSet::new();
        for family in each.sampled_families() {
            if sampled.contains(&family) {
                continue;
            }
            supplemented.insert(family.clone());
            session.families.insert(family.clone(), each.families[&family].clone());
            for (sample, labels) in &each.samples {
                if each.family_of(sample) == Some(family.as_str()) {
                    session.samples.entry(sample.clone()).or_default().extend(labels.iter().cloned());
                }
            }
        }
        eprintln!("families the flaky session did not sample, recorded through Metrics: {supplemented:?}");
        Known { exposition: session, supplemented }
    })
}

// --- PromQL, as far as the docs use it ---------------------------------

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Byte index just past the bracket group opening at `open` (`(` or `{`).
fn close_of(expr: &str, open: usize) -> usize {
    let (opening, closing) = match expr.as_bytes()[open] {
        b'(' => (b'(', b')'),
        b'{' => (b'{', b'}'),
        other => panic!("no bracket at {open} in {expr:?}: {}", other as char),
    };
    let mut depth = 0;
    let mut quoted = false;
    for (i, b) in expr.bytes().enumerate().skip(open) {
        match b {
            b'"' => quoted = !quoted,
            _ if quoted => {}
            b if b == opening => depth += 1,
            b if b == closing => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced brackets in {expr:?}")
}

/// Byte index of the bracket group that closes just before `end` opens.
fn open_of(expr: &str, end: usize) -> usize {
    let mut depth = 0;
    for (i, b) in expr.bytes().enumerate().take(end).collect::<Vec<_>>().into_iter().rev() {
        match b {
            b')' => depth += 1,
            b'(' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced brackets in {expr:?}")
}

/// The label names of a selector's matchers (`a="x", b=~"y|z", c!="w"`).
fn matcher_labels(matchers: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut current = String::new();
    for c in matchers.chars().chain([',']) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                let name: String = current.trim().chars().take_while(|c| is_name_char(*c)).collect();
                if !name.is_empty() {
                    labels.push(name);
                }
                current.clear();
            }
            _ if !quoted => current.push(c),
            _ => {}
        }
    }
    labels
}

/// A metric name in an expression, with the label names of its selector.
#[derive(Debug)]
struct Selector {
    start: usize,
    name: String,
    labels: Vec<String>,
}

/// Every metric selector (names outside quoted strings that are followed by
/// a selector or stand where a metric does).
fn selectors(expr: &str) -> Vec<Selector> {
    const KEYWORDS: [&str; 30] = [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "rate",
        "increase",
        "irate",
        "delta",
        "histogram_quantile",
        "time",
        "absent",
        "clamp_min",
        "clamp_max",
        "offset",
        "bool",
    ];
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            quoted = !quoted;
            i += 1;
        } else if quoted {
            if c == '\\' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // A selector without a name ({__name__=…}) would escape the checks.
            panic!("a selector without a metric name in {expr:?}");
        } else if c == '[' {
            i = expr[i..].find(']').map_or(bytes.len(), |end| i + end + 1);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len() && is_name_char(bytes[i] as char) {
                i += 1;
            }
            let name = &expr[start..i];
            let after = expr[i..].trim_start();
            let is_call_or_clause = after.starts_with('(');
            if is_call_or_clause {
                if matches!(name, "by" | "without" | "on" | "ignoring") {
                    i += expr[i..].find(')').expect("a closed label list") + 1;
                }
                continue;
            }
            if KEYWORDS.contains(&name) || name.starts_with('$') {
                continue;
            }
            let mut labels = Vec::new();
            if after.starts_with('{') {
                let open = i + (expr[i..].len() - after.len());
                let close = close_of(expr, open);
                labels = matcher_labels(&expr[open + 1..close - 1]);
                i = close;
            }
            found.push(Selector { start, name: name.to_string(), labels });
        } else {
            i += 1;
        }
    }
    found
}

/// Every `by`/`without`/`on`/`ignoring` clause: its labels, and the byte
/// range of the expression they apply to.
fn clauses(expr: &str) -> Vec<(String, Vec<String>, std::ops::Range<usize>)> {
    let mut found = Vec::new();
    for keyword in ["by", "without", "on", "ignoring"] {
        let mut from = 0;
        while let Some(at) = expr[from..].find(keyword).map(|at| at + from) {
            from = at + keyword.len();
            let before_ok = at == 0 || !is_name_char(expr[..at].chars().next_back().unwrap_or(' '));
            let rest = &expr[from..];
            let after_ok = rest.trim_start().starts_with('(');
            if !before_ok || !after_ok {
                continue;
            }
            let open = from + (rest.len() - rest.trim_start().len());
            let close = close_of(expr, open);
            let labels: Vec<String> =
                expr[open + 1..close - 1].split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            let scope = if matches!(keyword, "on" | "ignoring") {
                0..expr.len()
            } else {
                let next = expr[close..].trim_start();
                if next.starts_with('(') {
                    // `sum by (x) (…)`
                    let arg = close + (expr[close..].len() - next.len());
                    arg..close_of(expr, arg)
                } else {
                    // `sum (…) by (x)`
                    let end = expr[..at].trim_end().len();
                    open_of(expr, end)..end
                }
            };
            found.push((keyword.to_string(), labels, scope));
        }
    }
    found
}

/// Checks one expression; returns what is wrong with it, and the labels
/// its fleeting metrics carry (for legends and annotations).
fn check_expression(known: &Known, place: &str, expr: &str) -> (Vec<String>, BTreeSet<String>) {
    let exposition = &known.exposition;
    let mut problems = Vec::new();
    let mut carried: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    let selectors = selectors(expr);
    let labels_of = |name: &str| exposition.samples.get(name).cloned().unwrap_or_default();
    for selector in &selectors {
        if !selector.name.starts_with("fleeting_proxmox_") {
            if selector.name != "up" {
                problems.push(format!("{place}: unexpected metric {} in {expr:?}", selector.name));
            }
            continue;
        }
        if exposition.family_of(&selector.name).is_none() {
            problems.push(format!("{place}: {} is no family of the exposition (expr {expr:?})", selector.name));
            continue;
        }
        let labels = labels_of(&selector.name);
        for label in &selector.labels {
            if !labels.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                problems.push(format!("{place}: {} has no label {label:?} (it has {labels:?})", selector.name));
            }
        }
        carried.extend(labels);
    }
    for (keyword, labels, scope) in clauses(expr) {
        // Unknown names are reported above; their labels would only repeat it.
        let inside: Vec<&Selector> = selectors
            .iter()
            .filter(|s| scope.contains(&s.start) && s.name.starts_with("fleeting_proxmox_"))
            .filter(|s| exposition.family_of(&s.name).is_some())
            .collect();
        for selector in inside {
            let has = labels_of(&selector.name);
            for label in &labels {
                if !has.contains(label) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.push(format!(
                        "{place}: `{keyword} ({})` names {label:?}, which {} does not carry ({has:?})",
                        labels.join(", "),
                        selector.name
                    ));
                }
            }
        }
    }
    (problems, carried)
}

/// `{{label}}` placeholders of a Grafana legend.
fn legend_labels(legend: &str) -> Vec<String> {
    legend.split("{{").skip(1).filter_map(|part| part.split_once("}}")).map(|(l, _)| l.trim().to_string()).collect()
}

/// `$labels.name` references of an alert annotation.
fn annotation_labels(text: &str) -> Vec<String> {
    text.split("$labels.")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| is_name_char(*c)).collect::<String>())
        .filter(|l| !l.is_empty())
        .collect()
}

fn read_doc(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("could not read {}: {err}", full.display()))
}

fn collect_dashboard_queries(value: &serde_json::Value, path: &str, out: &mut Vec<(String, String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                let legend = map.get("legendFormat").and_then(|l| l.as_str()).unwrap_or_default();
                out.push((path.to_string(), expr.clone(), legend.to_string()));
            }
            let title = map.get("title").and_then(|t| t.as_str()).map(|t| format!("{path} / {t}"));
            for (key, child) in map {
                collect_dashboard_queries(child, title.as_deref().unwrap_or(&format!("{path}.{key}")), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_dashboard_queries(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_uses_only_metrics_and_labels_the_plugin_exposes() {
    let known = known_metrics();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read_doc("docs/grafana-dashboard.json")).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "schemaVersion 39 or later");
    let variables = dashboard["templating"]["list"].as_array().expect("template variables");
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("${name}"));
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");

    let mut problems = Vec::new();
    // The group variable: label_values(metric, label).
    let group_query = variable("group")["query"]["query"].as_str().expect("the group variable's query");
    let inner = group_query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values");
    let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
    let (metric, label) = (metric.trim(), label.trim());
    assert_eq!(label, "group");
    if known.exposition.family_of(metric).is_none() {
        problems.push(format!("$group: {metric} is no family of the exposition"));
    } else if !known.exposition.samples.get(metric).is_some_and(|labels| labels.contains(label)) {
        problems.push(format!("$group: {metric} has no label {label}"));
    }

    let mut queries = Vec::new();
    collect_dashboard_queries(&dashboard["panels"], "panels", &mut queries);
    assert!(queries.len() >= 20, "the dashboard's panels have {} queries", queries.len());
    let mut used = BTreeSet::new();
    for (place, expr, legend) in &queries {
        let (found, carried) = check_expression(known, place, expr);
        problems.extend(found);
        for label in legend_labels(legend) {
            if !carried.contains(&label) {
                problems.push(format!("{place}: legend {legend:?} names {label:?}, which {expr:?} does not carry"));
            }
        }
        used.extend(
            selectors(expr).into_iter().filter_map(|s| known.exposition.family_of(&s.name).map(str::to_string)),
        );
    }
    assert!(problems.is_empty(), "{}\nsupplemented families: {:?}", problems.join("\n"), known.supplemented);

    // Every family the plugin exposes has a place on the dashboard.
    let unused: Vec<&String> = known.exposition.families.keys().filter(|family| !used.contains(*family)).collect();
    assert!(unused.is_empty(), "families no panel shows: {unused:?}");
}

#[test]
fn the_alert_rules_use_only_metrics_and_labels_the_plugin_exposes() {
    let known = known_metrics();
    let rules: serde_norway::Value =
        serde_norway::from_str(&read_doc("docs/prometheus-alerts.yml")).expect("the rules file is YAML");
    let mut problems = Vec::new();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).expect("an alert or record name");
            alerts.insert(name.to_string());
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{name}: expr"));
            let (found, carried) = check_expression(known, name, expr);
            problems.extend(found);
            if rule["alert"].is_string() {
                assert!(rule["for"].is_string(), "{name}: a `for:` duration");
                assert!(
                    ["critical", "warning", "info"].contains(&rule["labels"]["severity"].as_str().unwrap_or_default()),
                    "{name}: a severity label"
                );
                for key in ["summary", "description"] {
                    let text = rule["annotations"][key].as_str().unwrap_or_else(|| panic!("{name}: {key}"));
                    for label in annotation_labels(text) {
                        if !carried.contains(&label) {
                            problems.push(format!("{name}: the {key} names $labels.{label}, which it does not carry"));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}\nsupplemented families: {:?}", problems.join("\n"), known.supplemented);
    for alert in [
        "FleetingProxmoxInstanceStuckCreating",
        "FleetingProxmoxProvisioningFailing",
        "FleetingProxmoxScaleUpHeld",
        "FleetingProxmoxApiErrors",
        "FleetingProxmoxQuarantinedVmids",
        "FleetingProxmoxRemovalFailing",
        "FleetingProxmoxImpostors",
        "FleetingProxmoxPluginDown",
    ] {
        assert!(alerts.contains(alert), "{alert} is missing from {alerts:?}");
    }
}

#[test]
fn the_expression_reader_catches_renamed_metrics_and_labels() {
    let known = known_metrics();
    let check = |expr: &str| check_expression(known, "self-test", expr).0;
    assert!(
        check(r#"sum by (phase, reason) (rate(fleeting_proxmox_provision_failures_total{group="a"}[5m]))"#).is_empty()
    );
    assert_eq!(check("sum by (phase) (fleeting_proxmox_instance)").len(), 1, "a renamed metric");
    assert_eq!(check("fleeting_proxmox_pve_requests").len(), 1, "a counter without _total");
    assert_eq!(check(r#"fleeting_proxmox_instances{stage="creating"}"#).len(), 1, "a label in a selector");
    assert_eq!(check("sum by (stage) (fleeting_proxmox_instances)").len(), 1, "a label in by (…)");
    assert_eq!(check("sum(fleeting_proxmox_instances) by (stage)").len(), 1, "a trailing by (…)");
    assert_eq!(
        check("histogram_quantile(0.9, sum by (le, operation) (rate(fleeting_proxmox_update_duration_seconds_bucket[5m])))")
            .len(),
        1,
        "update_duration has no operation"
    );
}
