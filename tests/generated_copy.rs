//! `generated/` is the reviewed copy of what `build.rs` writes into
//! `OUT_DIR`. This test fails with a diff when the copy is stale;
//! `UPDATE_GENERATED=1 cargo test --test generated_copy` refreshes it.

use std::path::Path;

const FILES: &[&str] = &["pve_api.rs", "proto.rs", "plugin.rs", "grpc.health.v1.rs"];

#[test]
fn generated_copy_matches_build_output() {
    let out_dir = Path::new(env!("OUT_DIR"));
    let copy_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("generated");
    let update = std::env::var_os("UPDATE_GENERATED").is_some_and(|v| v != "0");
    let mut stale = Vec::new();
    for name in FILES {
        let built = std::fs::read_to_string(out_dir.join(name)).expect("build.rs output is missing");
        let copy_path = copy_dir.join(name);
        let copy = std::fs::read_to_string(&copy_path).unwrap_or_default();
        if built == copy {
            continue;
        }
        if update {
            std::fs::create_dir_all(&copy_dir).unwrap();
            std::fs::write(&copy_path, &built).unwrap();
            eprintln!("updated {}", copy_path.display());
            continue;
        }
        let diff = similar::TextDiff::from_lines(&copy, &built);
        let mut report = String::new();
        for (index, hunk) in diff.unified_diff().context_radius(2).iter_hunks().enumerate() {
            if index == 20 {
                report.push_str("… (more hunks omitted)\n");
                break;
            }
            report.push_str(&hunk.to_string());
        }
        stale.push(format!("generated/{name} differs from the build output:\n{report}"));
    }
    assert!(
        stale.is_empty(),
        "{}\nRefresh the copy with: UPDATE_GENERATED=1 cargo test --test generated_copy",
        stale.join("\n")
    );
}
