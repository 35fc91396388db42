# Restarts and an in-place upgrade of warrant while the tagged agent loops
# (one new connection per request, no SDK retries): no request fails, and
# requests did overlap the restarts (measured from systemd's own journal
# records of each stop and start, against each request's start and end on
# the same clock). Then a request made while no daemon runs at all: it waits
# in warrant.socket's backlog and succeeds once the daemon is back.
# Stops agent.service at the end.
. "$T/lib.sh"

systemctl show -p InvocationID --value warrant.service > "$T/invocations"
for round in 1 2 3; do
    before=$(ok_count)
    t=$(now)
    systemctl restart warrant.service
    check "restart $round: warrant active again" systemctl is-active --quiet warrant.service
    note "restart$round=$(since "$t")s"
    systemctl show -p InvocationID --value warrant.service >> "$T/invocations"
    check "restart $round: requests keep succeeding" wait_for 120 at_least ok_count $((before + 5))
done
# An upgrade (the same .deb again) while the agent loops: the edited
# conffile stays, postinst restarts the daemon, no request fails.
before=$(ok_count)
t=$(now)
check "upgrade in place keeps the edited config" sh -c "DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold $T/warrant_*.deb > $T/upgrade.log 2>&1 && grep -q vmtest-provider-ca /etc/warrant/warrant.toml"
note "upgrade=$(since "$t")s"
check "upgrade: warrant active again" systemctl is-active --quiet warrant.service
systemctl show -p InvocationID --value warrant.service >> "$T/invocations"
check "upgrade: requests keep succeeding" wait_for 120 at_least ok_count $((before + 5))
systemctl stop agent.service
check "every restart made a new daemon" [ "$(sort -u "$T/invocations" | grep -c .)" -eq 5 ]
check "no request failed (first request to the last restart)" [ "$(fail_count)" -eq 0 ]
if [ "$(fail_count)" -gt 0 ]; then
    log "failed requests, by error:"
    grep '"ok": false' "$T/agent.jsonl" | cut -c1-220 | sort | uniq -c | head
fi
note "requests=$(ok_count) failed=$(fail_count)"

# Each stop/start of warrant.service, from systemd's structured records
# (MESSAGE_ID of "Stopping" and "Started"), on CLOCK_MONOTONIC like the
# agent's timestamps.
journalctl -o json --no-pager _PID=1 UNIT=warrant.service > "$T/warrant-jobs.json"
python3 "$T/overlap.py" "$T/warrant-jobs.json" "$T/agent.jsonl" > "$T/overlap.txt"
cat "$T/overlap.txt"
check "four restart windows found in the journal" [ "$(grep -c '^window' "$T/overlap.txt")" -eq 4 ]
overlapping=$(sed -n 's/^overlapping \([0-9]*\).*/\1/p' "$T/overlap.txt")
started_inside=$(sed -n 's/^started-inside \([0-9]*\).*/\1/p' "$T/overlap.txt")
note "overlapping=${overlapping:-0} started-while-restarting=${started_inside:-0}"
# The agent never pauses longer than 0.1 s between requests and each window
# lasts seconds: some request must overlap one. Requests that start inside
# a window are counted (a note), not required: a single request may span a
# whole window. The queued request below starts inside one, always.
check "requests overlapped the restarts" [ "${overlapping:-0}" -ge 1 ]

# No daemon at all: a tagged request made while warrant.service is stopped
# waits in warrant.socket's backlog; the connection starts the daemon
# (socket activation) and the request succeeds. Its start precedes the new
# daemon's "Started" record: it really was made while no daemon ran.
systemctl stop warrant.service
check "warrant.service stopped, warrant.socket still listening" sh -c \
    "! systemctl is-active --quiet warrant.service && systemctl is-active --quiet warrant.socket"
stopped_at=$(python3 -c 'import time; print(f"{time.monotonic():.6f}")')
systemd-run --quiet --wait --unit=queued-agent --slice=warrant-agents.slice -p Type=exec \
    -E OPENAI_API_KEY="$PLACEHOLDER" -E SSL_CERT_FILE=/var/lib/warrant/trust-bundle.pem \
    sh -c "python3 $T/agent.py --once > $T/queued.out 2>&1"
cat "$T/queued.out"
check "a request made while no daemon ran succeeds" grep -qx ok "$T/queued.out"
check "the socket started warrant again" systemctl is-active --quiet warrant.service
journalctl -o json --no-pager _PID=1 UNIT=warrant.service > "$T/warrant-jobs.json"
check "the request began before the new daemon was ready" python3 - "$T/warrant-jobs.json" "$T/queued.out" "$stopped_at" <<'PY'
import json, sys
started = [int(r["__MONOTONIC_TIMESTAMP"]) / 1e6 for r in map(json.loads, open(sys.argv[1]))
           if r.get("MESSAGE_ID") == "39f53479d3a045ac8e11786248231fbf"]
times = dict(w.split("=") for w in open(sys.argv[2]).read().split() if w.startswith("t"))
t0, t1, stopped = float(times["t0"]), float(times["t1"]), float(sys.argv[3])
ready = min((s for s in started if s > stopped), default=None)
print(f"stopped {stopped:.3f}, request {t0:.3f}-{t1:.3f}, daemon ready {ready}")
sys.exit(0 if ready is not None and stopped < t0 < ready < t1 else 1)
PY

check "warrant tag on a running unit asks for a restart" sh -c "warrant untag agent >/dev/null && systemctl start agent && warrant tag agent | grep -q 'restart it'"
systemctl stop agent.service
