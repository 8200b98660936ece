#!/usr/bin/env bash
# Runs the conformance suite against our binaries with every go-plugin
# version GitLab Runner ships: v1.6.1 (Runner 17.1–17.6), v1.6.2 (17.7–18.2),
# v1.7.0 (18.3–19.2) and v1.8.0 (19.3). The fleeting module stays at the
# newest version the Go module proxy serves (see proto/README.md).
#
# Usage: tests/conformance/run.sh [PLUGIN_BINARY FAKE_PLUGIN_BINARY [PVE_SIM_BINARY]]
# Without arguments it builds all three with cargo (debug profile).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ $# -ge 2 ]; then
    plugin="$(realpath "$1")"
    fake="$(realpath "$2")"
    sim="$(realpath "${3:-$(dirname "$1")/pve-sim}")"
else
    (cd "$root" && cargo build --locked --quiet --bin fleeting-plugin-proxmox --bin pve-sim --example fleeting-plugin-fake)
    target="${CARGO_TARGET_DIR:-$root/target}"
    plugin="$target/debug/fleeting-plugin-proxmox"
    fake="$target/debug/examples/fleeting-plugin-fake"
    sim="$target/debug/pve-sim"
fi

# The fleeting pseudo-versions are not in the public checksum database.
export GONOSUMDB="gitlab.com/gitlab-org/fleeting"
export GOFLAGS="-mod=mod"
export PLUGIN_BINARY="$plugin" FAKE_PLUGIN_BINARY="$fake" PVE_SIM_BINARY="$sim"

versions="${GO_PLUGIN_VERSIONS:-v1.6.1 v1.6.2 v1.7.0 v1.8.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
for version in $versions; do
    echo "== go-plugin $version"
    copy="$work/$version"
    mkdir -p "$copy"
    cp "$here"/*.go "$here/go.mod" "$here/go.sum" "$copy/"
    (
        cd "$copy"
        go mod edit -replace "github.com/hashicorp/go-plugin=github.com/hashicorp/go-plugin@$version"
        go mod tidy >/dev/null
        go list -m github.com/hashicorp/go-plugin
        go test -count=1 -timeout 10m ./...
    ) || status=1
done

# An older Runner: fleeting as pinned by Runner 17.5/17.6, with go-plugin v1.6.1.
echo "== older host: fleeting v0.0.0-20240911165028-a0ce7d6c3260 (Runner 17.5), go-plugin v1.6.1"
copy="$work/oldhost"
mkdir -p "$copy"
cp "$here"/*.go "$here/go.mod" "$here/go.sum" "$copy/"
(
    cd "$copy"
    go mod edit -require "gitlab.com/gitlab-org/fleeting/fleeting@v0.0.0-20240911165028-a0ce7d6c3260"
    go mod edit -replace "gitlab.com/gitlab-org/fleeting/fleeting=gitlab.com/gitlab-org/fleeting/fleeting@v0.0.0-20240911165028-a0ce7d6c3260"
    go mod edit -replace "github.com/hashicorp/go-plugin=github.com/hashicorp/go-plugin@v1.6.1"
    go mod tidy >/dev/null
    go list -m gitlab.com/gitlab-org/fleeting/fleeting github.com/hashicorp/go-plugin
    go test -tags oldhost -count=1 -timeout 10m ./...
) || status=1
exit $status
