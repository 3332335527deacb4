# qtap's single entry point. On a fresh machine:
#   make run    install what is missing, build, trace curl requests live
#   make test   install what is missing, build, run every test (unit and
#               privileged end-to-end; needs root), and the smoke subset
#               on Debian 12's 6.1 kernel in a VM
#
# `make run FILTER='mod:socket,exe.contains:nginx'` traces something else;
# `DEMO=0` turns off the built-in curl traffic.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

FILTER ?= mod:socket,mod:process,mod:openssl,exe.contains:curl,fd:socket
ENCODING ?= console
DEMO ?= 1
BPF_LINKER_VERSION := 0.10.1
# Debian packages the build, the demo and the tests use.
DEB_PACKAGES := curl nginx-light python3 iproute2 openssl gcc libssl-dev libcap2-bin tshark golang-go gnutls-bin
# What booting other kernels in a VM needs (tests/kernels/kernels.txt).
VM_PACKAGES := qemu-system-x86 busybox-static kmod
VIRTME_NG_VERSION := 1.42
QTAPD := target/release/qtapd
CARGO_DEB_VERSION := 3.8.0
K8S_VALIDATE_VERSION := 1.37.0
PKG := target/packaging

.PHONY: all deps vm-deps build run test test-kernels deb bench profile probe-profile soak lint clean

all: build

deps:
	@scripts/bootstrap.sh $(BPF_LINKER_VERSION) $(DEB_PACKAGES)

# virtme-ng (PyPI) boots a kernel with this machine's userspace.
vm-deps:
	@scripts/bootstrap.sh $(BPF_LINKER_VERSION) $(VM_PACKAGES)
	@vng --version 2>/dev/null | grep -q '$(VIRTME_NG_VERSION)' || python3 -m pip install --quiet virtme-ng==$(VIRTME_NG_VERSION)

build: deps
	cargo build --release --locked -p qtapd -p qtapctl

run: build
	@FILTER='$(FILTER)' ENCODING='$(ENCODING)' DEMO='$(DEMO)' scripts/run.sh $(QTAPD)

# Every test: unit tests of all crates and the privileged end-to-end tests,
# which start the real qtapd (built above) against the real kernel, and
# install, run and purge the Debian package; the Kubernetes manifests are
# checked against the API's schemas offline (kubernetes-validate, PyPI);
# then the smoke subset on each other kernel of tests/kernels/kernels.txt.
test: build deb vm-deps
	@python3 -c 'import kubernetes_validate' 2>/dev/null || python3 -m pip install --quiet kubernetes-validate==$(K8S_VALIDATE_VERSION)
	python3 -m kubernetes_validate --strict packaging/kubernetes/*.yaml
	cargo test --release --locked --workspace --exclude qtapd-ebpf --exclude qtap-tests
	QTAPD_BIN=$(CURDIR)/$(QTAPD) QTAPCTL_BIN=$(CURDIR)/target/release/qtapctl QTAP_DEB=$(CURDIR)/$(PKG)/qtap.deb \
		cargo test --release --locked -p qtap-tests -- --test-threads=1
	scripts/test-kernels.sh --subset smoke --vm-only

# The privileged end-to-end tests on every kernel of
# tests/kernels/kernels.txt (the host natively, others in a VM); writes
# the table to docs/kernels.md. Needs root; about half an hour.
test-kernels: build vm-deps
	scripts/test-kernels.sh --table target/kernels/table.md
	scripts/kernels-doc.sh target/kernels/table.md > docs/kernels.md

# The Debian package (packaging/, cargo-deb): both programs, the systemd
# unit, group qtap, the example config, man pages and completions.
deb: build
	@command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version $(CARGO_DEB_VERSION)
	mkdir -p $(PKG)/completions
	$(QTAPD) --print-man > $(PKG)/qtapd.8
	target/release/qtapctl generate man > $(PKG)/qtapctl.1
	target/release/qtapctl generate completions bash > $(PKG)/completions/qtapctl.bash
	target/release/qtapctl generate completions zsh > $(PKG)/completions/_qtapctl
	target/release/qtapctl generate completions fish > $(PKG)/completions/qtapctl.fish
	cargo deb -p qtapd --no-build --locked -o $(PKG)/qtap.deb

# Overhead of qtap and of strace/bpftrace on nginx under wrk, the event
# pipeline's throughput to 1/4/16 followers, and criterion micro-benchmarks
# of the per-event hot path; writes docs/benchmarks.md. Needs root; takes
# about ten minutes.
bench: build
	@scripts/bootstrap.sh $(BPF_LINKER_VERSION) $(DEB_PACKAGES) wrk strace bpftrace
	cargo build --release --locked -p qtap-tests --bin qtap-loadgen
	bench/run.sh $(QTAPD) target/release/qtapctl target/release/qtap-loadgen

# Where the pipeline's user-space time goes: qtapd and one JSON follower
# under qtap-loadgen, sampled by perf; CPU per event and the hottest
# symbols of each. Needs root and perf (linux-perf).
profile: build
	@scripts/bootstrap.sh $(BPF_LINKER_VERSION) $(DEB_PACKAGES) linux-perf
	cargo build --release --locked -p qtap-tests --bin qtap-loadgen
	bench/profile.sh $(QTAPD) target/release/qtapctl target/release/qtap-loadgen

# Where a traced program's time goes in the kernel programs: nginx under
# wrk with a session selecting it, sampled by perf; the worker's share
# under the syscall exit tracepoints and the functions it is spent in.
# Needs root and perf (linux-perf).
probe-profile: build
	@scripts/bootstrap.sh $(BPF_LINKER_VERSION) $(DEB_PACKAGES) linux-perf
	bench/probe-profile.sh $(QTAPD) target/release/qtapctl

# The long runs of the reliability work (docs/reliability.md): each fuzz
# target for FUZZ_SECONDS (120), then SOAK_SECONDS (600) of full-speed load
# with two followers and qtapd's RSS curve; writes docs/soak.md. Needs root;
# about 25 minutes with the fuzzers' first build.
soak: build
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cargo build --release --locked -p qtap-tests --bin qtap-loadgen
	bench/soak.sh $(QTAPD) target/release/qtapctl target/release/qtap-loadgen

lint: deps
	cargo fmt --all --check
	cargo clippy --release --locked --workspace --exclude qtapd-ebpf --all-targets -- -D warnings

clean:
	cargo clean
