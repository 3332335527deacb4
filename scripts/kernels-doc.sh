#!/usr/bin/env bash
# docs/kernels.md from the table test-kernels.sh wrote: the date, the
# command, the table.
set -euo pipefail
cat <<DOC
# Kernels

\`sudo make test-kernels\` on $(date -u +%Y-%m-%d) (host: $(uname -r)): the
privileged end-to-end tests on each kernel of
[\`tests/kernels/kernels.txt\`](../tests/kernels/kernels.txt) — the host's
natively, the others booted by virtme-ng under software emulation with
this machine's userspace and the binaries built here. Tests that measure
time are left out under emulation (\`tests/kernels/subsets.txt\`).

$(cat "$1")
DOC
