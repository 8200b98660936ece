#!/usr/bin/env bash
# Builds the release binaries of fleeting-plugin-proxmox for linux/amd64 and
# linux/arm64 and lays them out for GitLab's fleeting plugin distribution.
#
#   scripts/release.sh            # both architectures
#   scripts/release.sh amd64      # one
#
# Output (relative to the repository root; both directories are emptied first):
#   dist/linux/amd64/plugin       the OCI layout `fleeting-artifact release`
#   dist/linux/arm64/plugin       packs (dist/<os>/<arch>/plugin)
#   out/fleeting-plugin-proxmox-linux-<arch>   the same binaries by name, for
#                                 a plain download onto PATH
#   out/SHA256SUMS                their SHA-256 checksums (`sha256sum -c`)
#   out/SHA256SUMS.sig            with RELEASE_SIGNING_KEY=<ssh key>: an SSH
#   out/allowed_signers           signature of SHA256SUMS and the signer's
#                                 public key (scripts/sign-release.sh)
#
# The binaries are static (musl), like Go plugins built with CGO_ENABLED=0:
# they run on any Linux, glibc or not (Runner's Alpine images too). The C
# parts (aws-lc-rs, the TLS crypto) are cross-compiled with zig through
# cargo-zigbuild, both from PyPI; the script installs them and the Rust
# targets when missing. Publishing is a separate step:
#   fleeting-artifact release "$CI_REGISTRY_IMAGE:${VERSION#v}"
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
target_dir=${CARGO_TARGET_DIR:-$root/target}
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)

rust_target() {
    case $1 in
        amd64) echo x86_64-unknown-linux-musl ;;
        arm64) echo aarch64-unknown-linux-musl ;;
        *) echo "could not build for $1: supported architectures are amd64 and arm64" >&2; exit 2 ;;
    esac
}

targets=()
for arch in "${arches[@]}"; do targets+=("$(rust_target "$arch")"); done

# Tools: the Rust targets, zig and cargo-zigbuild.
installed=$(rustup target list --installed)
for target in "${targets[@]}"; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target"
done
if ! command -v cargo-zigbuild >/dev/null || ! python3 -m ziglang version >/dev/null 2>&1; then
    python3 -m pip install --quiet 'cargo-zigbuild>=0.19' 'ziglang>=0.13'
fi

started=$(date +%s)
target_args=()
for target in "${targets[@]}"; do target_args+=(--target "$target"); done
cargo zigbuild --locked --release --bin fleeting-plugin-proxmox "${target_args[@]}"

# dist/ and out/ hold one build of one revision: binaries of an earlier run
# must not end up in SHA256SUMS or in the OCI artifact.
rm -rf dist out
mkdir -p out
for arch in "${arches[@]}"; do
    binary=$target_dir/$(rust_target "$arch")/release/fleeting-plugin-proxmox
    mkdir -p "dist/linux/$arch"
    install -m 0755 "$binary" "dist/linux/$arch/plugin"
    install -m 0755 "$binary" "out/fleeting-plugin-proxmox-linux-$arch"
done

(cd out && sha256sum fleeting-plugin-proxmox-linux-* > SHA256SUMS && sha256sum --quiet -c SHA256SUMS)
if [ -n "${RELEASE_SIGNING_KEY:-}" ]; then
    scripts/sign-release.sh "$RELEASE_SIGNING_KEY" out
fi

# Each binary must be static and answer --version like a Go plugin: run
# natively, or through qemu-user when it is installed (qemu-user-static).
case $(uname -m) in
    x86_64) native=amd64 ;;
    aarch64) native=arm64 ;;
    *) native= ;;
esac
for arch in "${arches[@]}"; do
    binary="dist/linux/$arch/plugin"
    if command -v file >/dev/null; then
        description=$(file -b "$binary")
        if [[ $description != *"statically linked"* && $description != *"static-pie linked"* ]]; then
            echo "could not release $binary: it is not statically linked ($description)" >&2
            exit 1
        fi
    fi
    runner=()
    if [ "$arch" != "$native" ]; then
        cpu=$(rust_target "$arch")
        cpu=${cpu%%-*}
        emulator=$(command -v "qemu-$cpu" || command -v "qemu-$cpu-static" || true)
        if [ -z "$emulator" ]; then
            echo "note: not running $binary (no qemu-user for $arch)"
            continue
        fi
        runner=("$emulator")
    fi
    version=$("${runner[@]}" "$binary" --version)
    if ! grep -q "^OS/Arch: *linux/$arch\$" <<<"$version"; then
        echo "could not release $binary: its --version does not report linux/$arch" >&2
        exit 1
    fi
    echo "$version"
done

echo
for arch in "${arches[@]}"; do
    size=$(stat -c %s "dist/linux/$arch/plugin")
    echo "dist/linux/$arch/plugin  $((size / 1024)) KiB  $(file -b "dist/linux/$arch/plugin" 2>/dev/null || echo "(no file command)")"
done
cat out/SHA256SUMS
echo "built in $(( $(date +%s) - started )) s"
