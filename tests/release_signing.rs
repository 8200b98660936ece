//! `scripts/sign-release.sh`: the SSH signature over a release's SHA256SUMS
//! verifies with the published command, and fails once anything changed.
//! (The cross build itself is too slow for CI; README records its run.)

use std::path::Path;
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sign-release.sh");
const IDENTITY: &str = "release@fleeting-plugin-proxmox";

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|err| panic!("could not run {command:?}: {err}"))
}

fn new_key(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("release-key");
    let output = run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"]).arg(&key));
    assert!(output.status.success(), "ssh-keygen is needed for this test: {}", String::from_utf8_lossy(&output.stderr));
    key
}

/// The verification README tells users to run.
fn verify(dir: &Path) -> Output {
    let sums = std::fs::File::open(dir.join("SHA256SUMS")).unwrap();
    run(Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(dir.join("allowed_signers"))
        .args(["-I", IDENTITY, "-n", "file", "-s"])
        .arg(dir.join("SHA256SUMS.sig"))
        .stdin(sums))
}

#[test]
fn signed_checksums_verify_and_a_changed_line_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let sums =
        "1145b5418b99a33381049699c1b15432ddfdcc4b8aa1ad7a9bedc1908ec1dc7c  fleeting-plugin-proxmox-linux-amd64\n";
    std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    let key = new_key(dir.path());

    let output = run(Command::new(SCRIPT).arg(&key).arg(dir.path()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let signers = std::fs::read_to_string(dir.path().join("allowed_signers")).unwrap();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let public_key: Vec<&str> = public.split_whitespace().take(2).collect();
    assert!(signers.starts_with(&format!("{IDENTITY} namespaces=\"file\" {}", public_key.join(" "))), "{signers}");
    assert!(verify(dir.path()).status.success());

    // A swapped checksum (a replaced binary) breaks the signature.
    std::fs::write(dir.path().join("SHA256SUMS"), sums.replace("1145", "2145")).unwrap();
    let tampered = verify(dir.path());
    assert!(!tampered.status.success(), "a changed SHA256SUMS must not verify");

    // Signing again with another key: the old allowed_signers no longer fits.
    std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
    let old_signers = std::fs::read(dir.path().join("allowed_signers")).unwrap();
    let other = tempfile::tempdir().unwrap();
    let other_key = new_key(other.path());
    assert!(run(Command::new(SCRIPT).arg(&other_key).arg(dir.path())).status.success());
    std::fs::write(dir.path().join("allowed_signers"), old_signers).unwrap();
    assert!(!verify(dir.path()).status.success(), "a signature by another key must not verify");
}

#[test]
fn missing_inputs_are_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path());
    let absent = dir.path().join("absent-key");
    let cases: [(Vec<&std::ffi::OsStr>, &str); 3] = [
        (vec![], "no key given"),
        (vec![absent.as_os_str(), dir.path().as_os_str()], "does not exist; set RELEASE_SIGNING_KEY"),
        (vec![key.as_os_str(), dir.path().as_os_str()], "SHA256SUMS does not exist; run scripts/release.sh first"),
    ];
    for (args, expected) in cases {
        let output = run(Command::new(SCRIPT).args(&args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("SHA256SUMS.sig").exists());
}
