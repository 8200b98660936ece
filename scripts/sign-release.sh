#!/usr/bin/env bash
# Signs a release's checksums with an SSH key (`ssh-keygen -Y sign`,
# OpenSSH 8.1 or later), so users can check that SHA256SUMS, and through it
# every binary, comes from the project.
#
#   scripts/sign-release.sh KEY [DIR]
#
# KEY is a private key file, or a public key (`*.pub`) whose private half is
# loaded in ssh-agent (for hardware and passphrase-protected keys). DIR is
# where SHA256SUMS is (default: out). Writes DIR/SHA256SUMS.sig and
# DIR/allowed_signers (the signer's public key in ssh-keygen's format), then
# verifies the signature as a user would. `scripts/release.sh` calls this
# when RELEASE_SIGNING_KEY is set.
#
# The identity in allowed_signers is RELEASE_SIGNER (default
# release@fleeting-plugin-proxmox). Users must take the public key from a
# place they trust (the project page), not from the release itself.
set -euo pipefail

key=${1:-}
dir=${2:-out}
identity=${RELEASE_SIGNER:-release@fleeting-plugin-proxmox}
namespace=file

if [ -z "$key" ]; then
    echo "could not sign the release: no key given; usage: scripts/sign-release.sh KEY [DIR]" >&2
    exit 2
fi
if [ ! -f "$key" ]; then
    echo "could not sign the release: key file $key does not exist; set RELEASE_SIGNING_KEY to an SSH private key (or a .pub key held by ssh-agent)" >&2
    exit 2
fi
if [ ! -f "$dir/SHA256SUMS" ]; then
    echo "could not sign the release: $dir/SHA256SUMS does not exist; run scripts/release.sh first" >&2
    exit 2
fi
if ! command -v ssh-keygen >/dev/null; then
    echo "could not sign the release: ssh-keygen is missing; install OpenSSH 8.1 or later (apt-get install openssh-client)" >&2
    exit 2
fi

case $key in
    *.pub) public_key=$(cat "$key") ;;
    *) public_key=$(ssh-keygen -y -f "$key") ;;
esac

rm -f "$dir/SHA256SUMS.sig"
ssh-keygen -Y sign -q -f "$key" -n "$namespace" "$dir/SHA256SUMS"
printf '%s namespaces="%s" %s\n' "$identity" "$namespace" "$public_key" > "$dir/allowed_signers"

# Check the result exactly as the README tells users to.
ssh-keygen -Y verify -f "$dir/allowed_signers" -I "$identity" -n "$namespace" -s "$dir/SHA256SUMS.sig" < "$dir/SHA256SUMS"
