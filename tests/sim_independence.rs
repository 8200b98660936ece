//! The simulator judges the client by PVE's rules, not the client's own: `src/sim/` depends on nothing of the
//! plugin but the generated API types (`crate::pve::api::types`) and the lenient scalars they embed
//! (`crate::pve::lenient`). Its UPIDs, TOTP check, certificate fingerprints and release parsing are its own, so a
//! bug the client has cannot hide behind the same bug in the simulator.
//!
//! This test reads every `.rs` file under `src/sim/` and fails, naming file and line, on any other path into the
//! crate: another part of `crate::pve`, or any other room (`group`, `fleeting`, `goplugin`, `check`, `simulate`, …),
//! whether reached through `crate::`, the crate's name or a `super::` chain that climbs out of `sim`.

use std::path::{Path, PathBuf};

/// What `src/sim/` may name of the crate besides itself.
const ALLOWED: [&str; 3] = ["sim", "pve::api::types", "pve::lenient"];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `rest` starts with the path `prefix` followed by the end of a path segment.
fn starts_with_path(rest: &str, prefix: &str) -> bool {
    rest.strip_prefix(prefix).is_some_and(|after| !after.starts_with(is_ident))
}

/// Offsets where `word` starts as a whole identifier (`crate`, not `mycrate`; `$crate` counts).
fn word_starts<'a>(line: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    line.match_indices(word).map(|(at, _)| at).filter(move |&at| !line[..at].ends_with(is_ident))
}

/// The problems on one line of a file whose module sits `depth` levels below the crate root (`src/sim/mod.rs`: 1,
/// `src/sim/cluster.rs`: 2, `src/sim/api/nodes.rs`: 3). `rooms` are the crate's top-level modules.
fn line_problems(line: &str, depth: usize, rooms: &[String]) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    let mut problems = Vec::new();
    for root in ["crate::", "fleeting_plugin_proxmox::"] {
        for at in word_starts(code, root) {
            let rest = &code[at + root.len()..];
            if rest.starts_with('{') {
                problems.push(format!(
                    "`{root}{{…}}`: write paths into the crate out one by one, so this test can read them"
                ));
            } else if !ALLOWED.iter().any(|allowed| starts_with_path(rest, allowed)) {
                let path: String = rest.chars().take_while(|&c| is_ident(c) || c == ':').collect();
                problems.push(format!(
                    "`{root}{path}`: the simulator may use only crate::pve::api::types and crate::pve::lenient of the plugin"
                ));
            }
        }
    }
    // `super::super::…::pve` from deep enough reaches the crate root as surely as `crate::` does.
    for at in word_starts(code, "super::") {
        if code[..at].ends_with("super::") {
            continue; // inside a chain already looked at
        }
        let mut rest = &code[at..];
        let mut climbs = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = after;
        }
        if climbs < depth {
            continue;
        }
        if rest.starts_with('{') {
            problems.push("`super::…::{…}` at the crate root: write the paths out one by one".to_string());
        } else if let Some(room) = rooms
            .iter()
            .find(|room| room.as_str() != "sim" && starts_with_path(rest, room))
            .filter(|_| !ALLOWED.iter().any(|allowed| starts_with_path(rest, allowed)))
        {
            problems
                .push(format!("`{}{room}`: the simulator may not use the plugin's `{room}`", "super::".repeat(climbs)));
        }
    }
    // Code pulled in from elsewhere by file name.
    if code.contains("#[path") || word_starts(code, "include!").next().is_some() {
        problems.push("`#[path]` / `include!` could bring the client's code in; write the simulator's own".to_string());
    }
    problems
}

/// Every problem in `text`, as `file:line: problem`.
fn check_file(name: &str, text: &str, depth: usize, rooms: &[String]) -> Vec<String> {
    text.lines()
        .enumerate()
        .flat_map(|(index, line)| {
            line_problems(line, depth, rooms).into_iter().map(move |problem| format!("{name}:{}: {problem}", index + 1))
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crate's top-level modules, as `src/lib.rs` declares them.
fn rooms() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let name = line.strip_prefix("pub mod ").or_else(|| line.strip_prefix("mod "))?;
            Some(name.strip_suffix(';')?.to_string())
        })
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// How far below the crate root the module of `file` (relative to `src/`) sits.
fn module_depth(relative: &Path) -> usize {
    let components = relative.components().count();
    if relative.file_name().is_some_and(|name| name == "mod.rs") { components - 1 } else { components }
}

#[test]
fn the_simulator_depends_on_nothing_of_the_client_but_the_generated_types() {
    let rooms = rooms();
    for room in ["sim", "pve", "group", "fleeting", "goplugin", "check", "simulate"] {
        assert!(rooms.iter().any(|r| r == room), "src/lib.rs no longer declares `{room}`; rooms read: {rooms:?}");
    }
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src.join("sim"), &mut files);
    files.sort();
    let names: Vec<String> =
        files.iter().map(|f| f.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/")).collect();
    // Not vacuous: the files that used to reach into the client are among those read.
    assert!(files.len() >= 20, "read only {} files under src/sim: {names:?}", files.len());
    for expected in
        ["sim/mod.rs", "sim/tasks.rs", "sim/access.rs", "sim/certificate.rs", "sim/api/nodes.rs", "sim/upid.rs"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} was not read: {names:?}");
    }
    let mut problems = Vec::new();
    let mut allowed_uses = 0;
    for (file, name) in files.iter().zip(&names) {
        let text = std::fs::read_to_string(file).unwrap();
        allowed_uses += text.matches("crate::pve::api::types").count() + text.matches("crate::pve::lenient").count();
        problems.extend(check_file(&format!("src/{name}"), &text, module_depth(Path::new(name)), &rooms));
    }
    assert!(allowed_uses > 0, "no use of the generated types found: is this reading the simulator?");
    assert!(problems.is_empty(), "src/sim/ reaches into the plugin:\n{}", problems.join("\n"));
}

#[test]
fn the_check_catches_what_it_should() {
    let rooms: Vec<String> = ["check", "fleeting", "goplugin", "group", "openapi", "plugin", "pve", "sim", "simulate"]
        .map(String::from)
        .to_vec();
    let problems = |line: &str, depth: usize| check_file("src/sim/x.rs", line, depth, &rooms);
    for bad in [
        "use crate::pve::Upid;",
        "use crate::pve::task::Upid;",
        "    let code = crate::pve::auth::totp_from_base32(secret);",
        "use crate::pve::{Fingerprint, PveVersion};",
        "use crate::pve;",
        "use crate::pve::api::PveApi;",
        "use crate::pve::api::typesx::Foo;",
        "use crate::pve::lenient_extra::Foo;",
        "use crate::group::ProxmoxGroup;",
        "use crate::fleeting::FleetingService;",
        "use crate::goplugin::serve;",
        "use crate::check::privileges;",
        "use crate::simulate::run;",
        "use crate::openapi::convert;",
        "use crate::PveClient;",
        "use crate::{pve::Upid, sim::SimError};",
        "    $crate::pve::Upid::from_str(x)",
        "use fleeting_plugin_proxmox::pve::PveVersion;",
        "use ::fleeting_plugin_proxmox::group::Engine;",
        "use super::super::pve::Upid;",
        "use super::super::{pve, sim};",
        "#[path = \"../pve/task.rs\"] mod task;",
        "include!(\"../pve/task.rs\");",
    ] {
        let found = problems(bad, 2);
        assert_eq!(found.len(), 1, "`{bad}` gave {found:?}");
        assert!(found[0].starts_with("src/sim/x.rs:1: "), "{found:?}");
    }
    for good in [
        "use crate::pve::api::types;",
        "use crate::pve::api::types::GetClusterResourcesResponseDataItem as Item;",
        "use crate::pve::lenient::{PveBool, PveInt};",
        "use crate::sim::upid::Upid;",
        "use super::release::PveRelease;",
        "use super::super::wire::Reply;",
        "use super::super::pve::Upid;", // from src/sim/api/x.rs this is sim::pve, not the client
        "// crate::pve::Upid in a comment",
        "use super::Call; // not crate::pve::Upid",
        "use mycrate::pve::Upid;",
        "const DOCUMENT: &str = include_str!(\"../../openapi/pve.json\");",
        "let upid = Upid::decode(&text);",
    ] {
        assert_eq!(problems(good, if good.starts_with("use super::super::pve") { 3 } else { 2 }), Vec::<String>::new());
    }
    // Line numbers name the offending line.
    let text = "use super::SimError;\n\nuse crate::pve::Upid;\n";
    assert_eq!(problems(text, 2).len(), 1);
    assert!(problems(text, 2)[0].starts_with("src/sim/x.rs:3: "));
    // Depths as the crate sees them.
    assert_eq!(module_depth(Path::new("sim/mod.rs")), 1);
    assert_eq!(module_depth(Path::new("sim/tasks.rs")), 2);
    assert_eq!(module_depth(Path::new("sim/api/mod.rs")), 2);
    assert_eq!(module_depth(Path::new("sim/api/nodes.rs")), 3);
}
