#!/usr/bin/env bash
# Installs what building and testing qtap needs, only where it is missing:
# the nightly toolchain's rust-src (the kernel crate builds core for the BPF
# target), bpf-linker at the pinned version, and Debian packages.
# Usage: bootstrap.sh BPF_LINKER_VERSION DEB_PACKAGE...
set -euo pipefail

linker_version=$1
shift

say() { printf 'bootstrap: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
	say "cargo is not on PATH; this machine's Rust toolchain (rustup) is required"
	exit 1
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
	say "adding rust-src to the nightly toolchain"
	rustup component add rust-src --toolchain nightly
fi

if ! bpf-linker --version 2>/dev/null | grep -q "$linker_version"; then
	say "installing bpf-linker $linker_version"
	cargo install "bpf-linker@$linker_version" --locked
fi

missing=()
for pkg in "$@"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
	say "installing Debian packages: ${missing[*]}"
	sudo=()
	((EUID == 0)) || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
