#!/usr/bin/env bash
# Runs the privileged end-to-end tests on each kernel of
# tests/kernels/kernels.txt and prints a table: kernel, tests passed and
# failed, programs attached. The host kernel runs them natively; others
# boot in a VM (virtme-ng, software emulation) with this machine's
# userspace and the binaries built here.
#
# Usage: test-kernels.sh [--subset all|smoke] [--vm-only] [--table FILE]
#   --subset   run this subset on every kernel (default: each line's own)
#   --vm-only  leave out the host kernel (`make test` has just run it)
#   --table    also write the table, as Markdown, to FILE
# Exits non-zero when a kernel could not be booted or a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."

subset_override="" vm_only=0 table_file=""
while (($#)); do
	case $1 in
	--subset) subset_override=$2; shift 2 ;;
	--vm-only) vm_only=1; shift ;;
	--table) table_file=$2; shift 2 ;;
	*) echo "test-kernels: unknown argument $1" >&2; exit 2 ;;
	esac
done

say() { printf 'test-kernels: %s\n' "$*" >&2; }
work=$PWD/target/kernels
mkdir -p "$work"

# The test binaries, built once for every kernel.
cargo test --release --locked -p qtap-tests --no-run 2>/dev/null
test_bin() { ls -t target/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -1; }

# `binary[:filter]` specs of a subset, and the tests emulated kernels skip.
specs_of() { awk -v s="$1" '$1 == s { print $2 }' tests/kernels/subsets.txt; }
skip_vm=$(awk '$1 == "skip-vm" { printf "--skip %s ", $2 }' tests/kernels/subsets.txt)

# The newest Debian kernel package whose name matches $1, unpacked into
# $work; prints its release (`6.1.0-49-amd64`).
fetch_deb() {
	local pkg release dir
	pkg=$(apt-cache pkgnames linux-image- | grep -E "$1" | sort -V | tail -1)
	if [[ -z $pkg ]]; then
		apt-get update -qq
		pkg=$(apt-cache pkgnames linux-image- | grep -E "$1" | sort -V | tail -1)
	fi
	[[ -n $pkg ]] || { say "no Debian package matches $1"; return 1; }
	release=${pkg#linux-image-}
	dir=$work/$release
	if [[ ! -f $dir/boot/vmlinuz-$release ]]; then
		say "fetching $pkg"
		rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
		(cd "$dir.tmp" && apt-get download -q "$pkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb root)
		rm -rf "$dir" && mv "$dir.tmp/root" "$dir" && rm -rf "$dir.tmp"
	fi
	# virtme-ng takes the modules from the host's /lib/modules.
	if [[ ! -d /lib/modules/$release/kernel ]]; then
		mkdir -p "/lib/modules/$release"
		cp -a "$dir/lib/modules/$release/." "/lib/modules/$release/"
		depmod -a "$release"
	fi
	echo "$release"
}

# A VM sees this machine's /etc read-only: the users the tests run as
# (tests/src/lib.rs system_user) are made here, before any boots.
getent group qtap >/dev/null || groupadd --system qtap
for user in qtap-e2e-member qtap-e2e-stranger; do
	id "$user" >/dev/null 2>&1 && continue
	groups=(); [[ $user == qtap-e2e-member ]] && groups=(--groups qtap)
	useradd --system --no-create-home --shell /usr/sbin/nologin "${groups[@]}" "$user"
done

# A guest that never starts its script leaves qemu idle until the timeout
# (seen in CI: half an hour, nothing written). The guest's first act is
# to write OUT/kernel (vm-tests.sh), so a boot that has not in $boot_wait
# seconds (a boot takes about 20) is stopped and tried again.
boot_wait=${BOOT_WAIT:-300}
# boot_vm RELEASE OUT SPEC...: runs the specs in a VM; fails when the
# guest hung at boot.
boot_vm() {
	local release=$1 out=$2
	shift 2
	# The arguments go in a file: vng passes the command on the kernel's
	# command line, which holds 2048 bytes; past that the guest never
	# started the script (the cause of the hang above, once the smoke
	# subset grew).
	printf '%s\n' "$skip_vm" "$@" >"$out/args"
	# Its own process group, so a hung qemu goes with vng.
	setsid timeout 3600 vng --run "$work/$release/boot/vmlinuz-$release" \
		--disable-kvm --disable-microvm --cpus 2 --memory 2G \
		--rwdir "$out" --exec "$PWD/scripts/vm-tests.sh $out" \
		>"$out/vm.log" 2>&1 &
	local vm=$! waited=0
	while [[ ! -f $out/kernel ]] && kill -0 "$vm" 2>/dev/null && ((waited < boot_wait)); do
		sleep 5
		waited=$((waited + 5))
	done
	if [[ ! -f $out/kernel ]] && kill -0 "$vm" 2>/dev/null; then
		kill -- -"$vm" 2>/dev/null || true
		wait "$vm" 2>/dev/null || true
		return 1
	fi
	wait "$vm" 2>/dev/null || true
}

rows=() failed=0
while read -r name source subset; do
	[[ -z $name || $name == \#* ]] && continue
	subset=${subset_override:-$subset}
	out=$work/out-$name
	rm -rf "$out" && mkdir -p "$out" && chmod 755 "$out"
	specs=()
	for spec in $(specs_of "$subset"); do
		bin=$(test_bin "${spec%%:*}")
		[[ -n $bin ]] || { say "no test binary ${spec%%:*}"; exit 1; }
		filter=""; [[ $spec == *:* ]] && filter=${spec#*:}
		specs+=("$PWD/$bin" "${filter:--}")
	done
	if [[ $source == host ]]; then
		((vm_only)) && continue
		release=$(uname -r)
		say "$name ($release): ${#specs[@]} specs natively"
		scripts/vm-tests.sh "$out" "" "${specs[@]}" || true
	else
		release=$(fetch_deb "${source#deb:}") || { rows+=("| $name | - | boot failed | - |"); failed=1; continue; }
		for attempt in 1 2 3; do
			say "$name ($release): booting (software emulation, attempt $attempt)"
			boot_vm "$release" "$out" "${specs[@]}" && break
			say "$name: the guest showed no sign of life in ${boot_wait}s; stopped it"
			((attempt < 3)) && mv "$out/vm.log" "$out/vm-hung-$attempt.log"
		done
	fi
	if [[ ! -f $out/done ]]; then
		say "$name: the tests did not finish; see $out/vm.log"
		rows+=("| $name | $release | did not finish | - |")
		failed=1
		continue
	fi
	passed=$(awk '{ p += $1 } END { print p + 0 }' "$out/results")
	fails=$(awk '{ f += $2 } END { print f + 0 }' "$out/results")
	attached=$(cat "$out/attached")
	((fails == 0 && passed > 0)) || failed=1
	rows+=("| $name | $(cat "$out/kernel") | $passed passed, $fails failed | $attached |")
	if ((fails)); then
		grep -h -E '^test .* FAILED|panicked at' "$out"/*.out >&2 || true
	fi
done < tests/kernels/kernels.txt

table=$(printf '| kernel | release | privileged end-to-end tests | programs attached |\n| --- | --- | --- | ---: |\n'; printf '%s\n' "${rows[@]}")
echo "$table"
[[ -n $table_file ]] && printf '%s\n' "$table" >"$table_file"
exit "$failed"
