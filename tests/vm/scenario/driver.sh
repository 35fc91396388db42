#!/bin/sh
# The VM test driver, run once by vmtest.service as root inside a throwaway
# VM (systemd as PID 1, no network): runs every checks/NN-*.sh in the order
# of its number, each in its own shell (see lib.sh for what a check may
# do), and reports each one and a verdict on the second serial port:
#   CHECK <name> PASS|FAIL <ok>/<all> [<secs>s] <failed assertions>
#   VERDICT PASS|FAIL kernel=<release> [failed: ...] <notes>
# Everything else goes to the console log. To add a check, add a file to
# checks/: nothing here or in xtask changes.
set -u
# The checks find lib.sh (and everything else) through $T.
export T=/run/vmtest
cd "$T"
CHECK=driver
. ./lib.sh
: > "$T/notes"
: > "$T/shared.sh"
KERNEL=$(uname -r)
log "kernel $KERNEL, $(systemctl --version | head -1)"
channel() { echo "$*" > /dev/ttyS1; }

failed=""
stopped=""
for script in checks/[0-9][0-9]-*.sh; do
    name=$(basename "$script" .sh)
    if [ -n "$stopped" ]; then
        channel "CHECK $name SKIP (not run: $stopped stopped the scenario)"
        continue
    fi
    : > "$RESULTS/$name"
    started=$(now)
    log "=== $name"
    CHECK=$name sh "$script"
    rc=$?
    secs=$(since "$started")
    if [ $rc -ne 0 ] && [ $rc -ne 3 ] && ! grep -q '^FAIL' "$RESULTS/$name"; then
        # A crash, not a failed assertion: still a failure.
        echo "FAIL: the script exited with status $rc" >> "$RESULTS/$name"
    fi
    all=$(grep -c '^\(ok\|FAIL\|STOP\)' "$RESULTS/$name")
    oks=$(grep -c '^ok' "$RESULTS/$name")
    bad=$(grep '^\(FAIL\|STOP\)' "$RESULTS/$name" | cut -d' ' -f2- | paste -sd';' -)
    if [ -z "$bad" ] && [ "$all" -gt 0 ]; then
        channel "CHECK $name PASS $oks/$all [${secs}s]"
    else
        [ "$all" -gt 0 ] || bad="no assertion was made"
        channel "CHECK $name FAIL $oks/$all [${secs}s] $bad"
        failed="$failed; $name: $bad"
    fi
    if [ $rc -eq 3 ]; then
        stopped=$name
    fi
done

log "--- warrant's notable log lines"
journalctl -u warrant --no-pager -o short-monotonic \
    | grep -E 'WARN|ERROR|tagged|ready|SIG|drain|watchdog|exec generations|prctl|kernel' \
    | cut -c1-300 | tail -60
if [ -n "$failed" ]; then
    log "--- warrant journal"
    journalctl -u warrant -u warrant.socket --no-pager -o short-monotonic | tail -80
    log "--- agent"
    tail -20 "$T/agent.jsonl" 2>/dev/null
fi
notes=$(paste -sd' ' "$T/notes")
if [ -n "$failed" ]; then
    channel "VERDICT FAIL kernel=$KERNEL failed: ${failed#; } | $notes"
else
    channel "VERDICT PASS kernel=$KERNEL $notes"
fi
exit 0
