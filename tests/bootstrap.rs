//! `fleeting-plugin-proxmox bootstrap`: the binary installs itself into a
//! plugin directory in the layout Runner reads, and refuses bad input
//! without leaving anything behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_fleeting-plugin-proxmox");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn bootstrap(plugin_dir: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("bootstrap")
        .args(args)
        .env("FLEETING_PLUGIN_PATH", plugin_dir)
        .env_remove("FLEETING_PLUGIN_PKG_VERSION")
        .output()
        .expect("run the plugin binary")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn installs_itself_where_runner_looks_and_keeps_an_existing_install() {
    let plugins = tempfile::tempdir().unwrap();
    let output = bootstrap(plugins.path(), &["registry.example.com/Runners/fleeting-plugin-proxmox:latest"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let expected = plugins.path().join("registry.example.com/!runners/fleeting-plugin-proxmox").join(VERSION);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim_end(), expected.display().to_string());
    let installed = expected.join("plugin");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(BINARY).unwrap(), "the plugin must be this binary");
    assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(entries(&expected), ["plugin"]);
    assert_eq!(entries(plugins.path()), ["registry.example.com"], "no staging directory may be left behind");

    let version = Command::new(&installed).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(&format!("Version:      {VERSION}")));

    // A second run (a restarted init container) keeps the install Runner may be running.
    let before = std::fs::metadata(&installed).unwrap().modified().unwrap();
    let again = bootstrap(plugins.path(), &["registry.example.com/Runners/fleeting-plugin-proxmox"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(again.stdout, output.stdout);
    assert_eq!(std::fs::metadata(&installed).unwrap().modified().unwrap(), before);
}

#[test]
fn a_bare_name_resolves_to_gitlabs_plugin_namespace() {
    let plugins = tempfile::tempdir().unwrap();
    let output = bootstrap(plugins.path(), &["proxmox"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let expected = plugins.path().join("registry.gitlab.com/gitlab-org/fleeting/plugins/proxmox").join(VERSION);
    assert!(expected.join("plugin").is_file(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn a_package_version_mismatch_is_warned_about() {
    let plugins = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args(["bootstrap", "registry.example.com/runners/proxmox"])
        .env("FLEETING_PLUGIN_PATH", plugins.path())
        .env("FLEETING_PLUGIN_PKG_VERSION", "99.0.0")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("\"99.0.0\" != \"{VERSION}\"")), "{stderr}");
}

#[test]
fn bad_input_is_refused_with_the_fix_and_nothing_is_written() {
    let plugins = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&[], "the plugin repository is missing"),
        (&["registry.example.com:5000/runners/proxmox"], "registry port"),
        (&["registry.example.com/runners/../../etc"], "not allowed as a path element"),
    ];
    for (args, expected) in cases {
        let output = bootstrap(plugins.path(), args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    assert!(entries(plugins.path()).is_empty());

    // A version directory without its binary (made by hand) is not taken
    // for an install.
    let empty = plugins.path().join("registry.example.com/runners/proxmox").join(VERSION);
    std::fs::create_dir_all(&empty).unwrap();
    let output = bootstrap(plugins.path(), &["registry.example.com/runners/proxmox"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds no `plugin` file") && stderr.contains("remove the directory"), "{stderr}");
    std::fs::remove_dir_all(plugins.path().join("registry.example.com")).unwrap();

    let missing = plugins.path().join("not-there");
    let output = bootstrap(&missing, &["registry.example.com/runners/proxmox"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FLEETING_PLUGIN_PATH") && stderr.contains("not-there"), "{stderr}");
    assert!(!missing.exists());
}
