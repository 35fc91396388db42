# Sourced by driver.sh and by every check (tests/vm/scenario/checks/NN-*.sh).
#
# A check script is plain sh, run as root in the VM by the driver, in the
# order of its number. It records what it proves with `check WHAT CMD...`
# (one line per assertion: "ok: WHAT" or "FAIL: WHAT"), may add key=value
# figures to the verdict line with `note`, hands values to later checks with
# `share NAME VALUE`, and calls `stop_here REASON` when nothing after it can
# run (the daemon did not start, say): the driver then fails the kernel and
# runs no further checks. Anything a check leaves for others (units, files)
# is documented in its header.
T=/run/vmtest
CHECK=${CHECK:-driver}
RESULTS=$T/results
mkdir -p "$RESULTS"
log() { echo "vmtest[$CHECK]: $*"; }
# check WHAT CMD...: runs CMD; records and returns its success.
check() {
    what=$1
    shift
    if "$@"; then
        log "ok: $what"
        echo "ok: $what" >> "$RESULTS/$CHECK"
        return 0
    fi
    log "FAIL: $what"
    echo "FAIL: $what" >> "$RESULTS/$CHECK"
    return 1
}
# note KEY=VALUE: a figure for the verdict line (timings, counts).
note() { echo "$*" >> "$T/notes"; }
# share NAME VALUE: NAME=VALUE in every later check.
share() { printf "%s='%s'\n" "$1" "$2" >> "$T/shared.sh"; }
# stop_here REASON: this check failed so that no later check can run.
stop_here() {
    log "STOP: $*"
    echo "STOP: $*" >> "$RESULTS/$CHECK"
    exit 3
}
[ -f "$T/shared.sh" ] && . "$T/shared.sh"

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
# count PATTERN FILE: lines of FILE containing PATTERN (0 if none or no file).
count() {
    n=$(grep -c -- "$1" "$2" 2>/dev/null)
    echo "${n:-0}"
}
# wait_for SECONDS CMD...: polls CMD (4 times a second) until it succeeds.
wait_for() {
    limit=$1
    shift
    i=0
    while ! "$@"; do
        i=$((i + 1))
        [ $i -ge $((limit * 4)) ] && return 1
        sleep 0.25
    done
}
# The looping agent's log (agent.py --out): one JSON line per request.
ok_count() { count '"ok": true' "$T/agent.jsonl"; }
fail_count() { count '"ok": false' "$T/agent.jsonl"; }
at_least() { [ "$($1)" -ge "$2" ]; }
# status_field EXPR: a value of `warrant status --json`, by a Python
# expression on `s` (e.g. "s['kernel']['hooks']['prctl_watch']['via']").
status_field() {
    warrant status --json | python3 -c "import json, sys; s = json.load(sys.stdin); print($1)"
}
# metric NAME LABELS: the value of a Prometheus sample on warrant's metrics
# endpoint (0 when absent), e.g. metric warrant_connections_total 'kind="refused"'.
metric() {
    python3 "$T/metric.py" 127.0.0.1:9464 "$1" "${2:-}"
}
