#!/usr/bin/env bash
# Cross-checks the Proxmox VE simulator with github.com/luthermonson/go-proxmox:
# builds pve-sim, starts it on an ephemeral loopback port with
# tests/sim/go-client.toml, runs `go test ./...` here against it, and always
# stops it. Uses CARGO_TARGET_DIR when set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac

cargo build --quiet --locked --manifest-path "$repo/Cargo.toml" --bin pve-sim

work="$(mktemp -d)"
sim_pid=""
cleanup() {
    if [ -n "$sim_pid" ] && kill -0 "$sim_pid" 2>/dev/null; then
        kill "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$target/debug/pve-sim" --listen 127.0.0.1:0 --scenario "$repo/tests/sim/go-client.toml" \
    --cert-dir "$work/certs" --ready-file "$work/ready.json" >"$work/pve-sim.log" 2>&1 &
sim_pid=$!

for _ in $(seq 1 300); do
    [ -f "$work/ready.json" ] && break
    if ! kill -0 "$sim_pid" 2>/dev/null; then
        echo "pve-sim exited before it was ready:" >&2
        cat "$work/pve-sim.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ ! -f "$work/ready.json" ]; then
    echo "pve-sim did not get ready within 30 s" >&2
    cat "$work/pve-sim.log" >&2
    exit 1
fi
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$work/ready.json"; }
url="$(field url)"
# It answers (401 without credentials is an answer).
curl --silent --insecure --output /dev/null --max-time 10 "$url/api2/json/version"

cd "$here"
PVE_SIM_URL="$url" \
PVE_SIM_FINGERPRINT="$(field fingerprint)" \
PVE_SIM_USER="gotest@pve" \
PVE_SIM_PASSWORD="gotest-password" \
PVE_SIM_TOKEN_ID="gotest@pve!ci" \
PVE_SIM_TOKEN_SECRET="0c7a2f6e-3d51-4f0b-9a66-5e1f2b3c4d5e" \
    go test -count=1 ${GO_TEST_FLAGS:-} ./...
