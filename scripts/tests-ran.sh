#!/usr/bin/env bash
# Read the output of `make test` (a log file, or stdin) and fail unless every pytest run in it passed at least one
# test. pytest itself exits 0 when every test was skipped (e.g. root tests run without root, the VM tier without
# qemu); a CI run that tested nothing must not look green.
set -euo pipefail
log="${1:-/dev/stdin}"

# The last line of each pytest run: "24 passed in 12.54s", "3 passed, 19 skipped in 1.2s (0:00:01)",
# "19 skipped in 0.05s", "no tests ran in 0.01s"; with decorations ("=== ... ===") unless run with -q.
summaries=$(grep -E '^(=+ )?(no tests ran|([0-9]+ [a-z]+(, )?)+) in [0-9.]+s' "$log" || true)
if [ -z "$summaries" ]; then
    echo "tests-ran: no pytest summary in the output: no tests ran" >&2
    exit 1
fi
status=0
while IFS= read -r line; do
    if ! grep -qE '(^|[^0-9])[1-9][0-9]* passed' <<<"$line"; then
        echo "tests-ran: a pytest run passed no test: ${line}" >&2
        status=1
    fi
done <<<"$summaries"
exit $status
