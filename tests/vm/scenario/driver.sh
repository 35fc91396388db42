#!/bin/sh
# The VM scenarios, run by vmtest.service as root inside a throwaway VM
# (systemd as PID 1, no network). Writes one verdict line to the second
# serial port; everything else goes to the console log.
#  1. apt install the .deb, start warrant, `warrant tag` an agent unit that
#     runs the Python openai SDK with a placeholder key: the mock provider
#     sees the real key.
#  2. systemctl restart warrant (three times), then an in-place upgrade of
#     the package, while the agent loops: no request fails.
#  3. an untagged unit reaches the mock itself with its placeholder (401);
#     a unit in another slice that connects to the listener is refused.
#  4. systemd-analyze security warrant.service.
# Then untag and purge.
set -u
T=/run/vmtest
cd "$T"
KERNEL=$(uname -r)
FAILED=""
NOTES=""
log() { echo "vmtest: $*"; }
check() {
    what=$1
    shift
    if "$@"; then log "ok: $what"; else log "FAIL: $what"; FAILED="$FAILED; $what"; fi
}
note() { NOTES="$NOTES $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
count() {
    n=$(grep -c -- "$1" "$2" 2>/dev/null)
    echo "${n:-0}"
}
finish() {
    log "--- warrant's notable log lines"
    journalctl -u warrant --no-pager -o short-monotonic | grep -E 'WARN|ERROR|tagged|ready|SIG|drain|watchdog|exec generations' | cut -c1-300 | tail -60
    if [ -n "$FAILED" ]; then
        log "--- warrant journal"
        journalctl -u warrant -u warrant.socket --no-pager -o short-monotonic | tail -80
        log "--- agent"
        tail -20 "$T/agent.jsonl" 2>/dev/null
        echo "VERDICT FAIL kernel=$KERNEL failed:${FAILED#;}${NOTES}" > /dev/ttyS1
    else
        echo "VERDICT PASS kernel=$KERNEL${NOTES}" > /dev/ttyS1
    fi
    exit 0
}
wait_for() { # seconds, command...
    limit=$1
    shift
    i=0
    while ! "$@"; do
        i=$((i + 1))
        [ $i -ge $((limit * 4)) ] && return 1
        sleep 0.25
    done
}
ok_count() { count '"ok": true' "$T/agent.jsonl"; }
fail_count() { count '"ok": false' "$T/agent.jsonl"; }
at_least() { [ "$($1)" -ge "$2" ]; }

log "kernel $KERNEL"
REAL="sk-proj-vmtest-real-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
PLACEHOLDER="placeholder-not-a-key"
printf %s "$REAL" > "$T/real-openai.key"
# The VM's own /etc/hosts: the provider names go to the mock.
echo "127.0.0.2 api.openai.com api.anthropic.com generativelanguage.googleapis.com" >> /etc/hosts

systemd-run --quiet --unit=mock-provider -p Type=exec \
    "$T/mock_provider" --listen 127.0.0.2:443 --ca-out "$T/provider-ca.pem" \
    --record "$T/provider-saw.jsonl" --key "openai=$T/real-openai.key"
check "mock provider listens" python3 "$T/wait_port.py" 127.0.0.2 443 30 || finish

# --- 1. install, configure, start, tag
t=$(now)
check "apt install ./warrant.deb" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q $T/warrant_*.deb > $T/apt.log 2>&1 || { cat $T/apt.log; false; }"
note "install=$(since "$t")s"
check "config is a conffile" grep -q /etc/warrant/warrant.toml /var/lib/dpkg/info/warrant.conffiles
check "credentials dir is 0700" [ "$(stat -c %a /etc/warrant/credentials)" = 700 ]
check "units installed" systemctl cat warrant.service warrant.socket warrant-agents.slice > /dev/null
[ -x /usr/bin/warrant ] || finish

# The shipped config, with the mock's CA trusted for the openai upstream.
install -m 0644 "$T/provider-ca.pem" /usr/local/share/vmtest-provider-ca.pem
sed -i 's|^credential = "openai"$|&\nca_file = "/usr/local/share/vmtest-provider-ca.pem"|' /etc/warrant/warrant.toml
for provider in openai anthropic gemini; do
    install -m 0600 "$T/real-openai.key" "/etc/warrant/credentials/$provider"
done
check "warrant check-config" warrant check-config /etc/warrant/warrant.toml
# Debian's kernels default to perf_event_paranoid = 3 (a Debian patch: only
# CAP_SYS_ADMIN may open perf events); at 2, CAP_PERFMON attaches the prctl
# watch, as the README says.
check "perf_event_paranoid = 2" sysctl -q -w kernel.perf_event_paranoid=2
t=$(now)
check "systemctl enable --now warrant" systemctl enable --now warrant.service
note "start=$(since "$t")s"
check "warrant is active" systemctl is-active --quiet warrant.service
if ! systemctl is-active --quiet warrant.service; then
    # Nothing below can pass without the daemon.
    finish
fi
check "warrant.socket is active" systemctl is-active --quiet warrant.socket
check "the prctl(PR_SET_MM) watch is attached" sh -c "! journalctl -u warrant --no-pager | grep -q 'no prctl(PR_SET_MM) watch'"
check "watchdog configured" sh -c "systemctl show -p WatchdogUSec warrant.service | grep -q 30s"

# The CA in the system trust store, for agents that ignore SSL_CERT_FILE.
warrant ca export > "$T/warrant-ca.pem"
CA_LINE=$(sed -n 2p "$T/warrant-ca.pem")
check "warrant ca install" sh -c "warrant ca install > /dev/null 2>&1"
check "the system bundle trusts warrant's CA" grep -qF "$CA_LINE" /etc/ssl/certs/ca-certificates.crt

cat > /etc/systemd/system/agent.service <<UNIT
[Unit]
Description=test agent: the Python openai SDK with a placeholder key
[Service]
Type=exec
Environment=OPENAI_API_KEY=$PLACEHOLDER
ExecStart=/usr/bin/python3 $T/agent.py --out $T/agent.jsonl
UNIT
systemctl daemon-reload
warrant tag agent > "$T/tag.out" 2>&1
check "warrant tag agent" [ $? -eq 0 ]
cat "$T/tag.out"
check "tag says no restart needed (not running)" grep -q "not running" "$T/tag.out"
systemctl start agent.service
check "agent runs in warrant-agents.slice" sh -c "systemctl show -p Slice agent.service | grep -qx Slice=warrant-agents.slice"
check "agent makes requests through warrant" wait_for 180 at_least ok_count 3
if [ "$(ok_count)" -lt 3 ]; then finish; fi
check "the mock saw the real key" grep -q "Bearer $REAL" "$T/provider-saw.jsonl"
check "the mock never saw the placeholder" [ "$(count "$PLACEHOLDER" "$T/provider-saw.jsonl")" -eq 0 ]

# --- 2. restarts under load
for round in 1 2 3; do
    before=$(ok_count)
    t=$(now)
    systemctl restart warrant.service
    check "restart $round: warrant active again" systemctl is-active --quiet warrant.service
    note "restart$round=$(since "$t")s"
    check "restart $round: requests keep succeeding" wait_for 120 at_least ok_count $((before + 5))
done
# An upgrade (the same .deb again) while the agent loops: the edited
# conffile stays, postinst restarts the daemon, no request fails.
before=$(ok_count)
t=$(now)
check "upgrade in place keeps the edited config" sh -c "DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold $T/warrant_*.deb > $T/upgrade.log 2>&1 && grep -q vmtest-provider-ca /etc/warrant/warrant.toml"
note "upgrade=$(since "$t")s"
check "upgrade: warrant active again" systemctl is-active --quiet warrant.service
check "upgrade: requests keep succeeding" wait_for 120 at_least ok_count $((before + 5))
systemctl stop agent.service
check "no request failed (first request to the last restart)" [ "$(fail_count)" -eq 0 ]
if [ "$(fail_count)" -gt 0 ]; then
    log "failed requests, by error:"
    grep '"ok": false' "$T/agent.jsonl" | cut -c1-220 | sort | uniq -c | head
    log "first failure at line $(grep -n '"ok": false' "$T/agent.jsonl" | head -1 | cut -d: -f1), last at $(grep -n '"ok": false' "$T/agent.jsonl" | tail -1 | cut -d: -f1) of $(wc -l < "$T/agent.jsonl")"
fi
note "requests=$(ok_count) failed=$(fail_count)"
check "warrant tag on a running unit asks for a restart" sh -c "warrant untag agent >/dev/null && systemctl start agent && warrant tag agent | grep -q 'restart it'"
systemctl stop agent.service

# --- 3. untagged and other-slice units
systemd-run --quiet --wait --pipe -p Type=exec -E OPENAI_API_KEY=$PLACEHOLDER \
    -E SSL_CERT_FILE=$T/provider-ca.pem python3 "$T/agent.py" --once > "$T/untagged.out" 2>&1
cat "$T/untagged.out"
check "untagged unit reaches the mock with its placeholder (401)" grep -qx "status=401" "$T/untagged.out"
check "the mock saw the placeholder from the untagged unit" grep -q "Bearer $PLACEHOLDER" "$T/provider-saw.jsonl"
systemd-run --quiet --wait --pipe --slice=other-test.slice python3 "$T/direct.py" > "$T/direct.out" 2>&1
cat "$T/direct.out"
check "a unit in another slice is refused by the listener" grep -q "^refused" "$T/direct.out"
check "warrant logged the refusal" sh -c "journalctl -u warrant --no-pager | grep -q 'connection without an Origin'"

# --- 4. hardening
systemd-analyze security --no-pager warrant.service > "$T/security.out" 2>&1
cat "$T/security.out"
EXPOSURE=$(sed -n 's/.*Overall exposure level for warrant.service: \([0-9.]*\).*/\1/p' "$T/security.out")
note "exposure=${EXPOSURE:-?}"
check "systemd-analyze exposure <= 3.0" python3 -c "import sys; sys.exit(0 if float(sys.argv[1] or 99) <= 3.0 else 1)" "${EXPOSURE:-}"

# --- untag, purge
warrant untag agent > /dev/null
check "untag removes the drop-in" [ ! -e /etc/systemd/system/agent.service.d/50-warrant.conf ]
check "pins exist before purge" [ -d /sys/fs/bpf/warrant ]
check "apt purge warrant" sh -c "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q warrant > $T/purge.log 2>&1 || { cat $T/purge.log; false; }"
check "purge removed state, logs, pins and config" sh -c "[ ! -e /var/lib/warrant ] && [ ! -e /var/log/warrant ] && [ ! -e /sys/fs/bpf/warrant ] && [ ! -e /etc/warrant ]"
check "purge removed the CA from the system bundle" sh -c "! grep -qF '$CA_LINE' /etc/ssl/certs/ca-certificates.crt"
ls -la /var/lib/warrant /var/log/warrant /sys/fs/bpf/warrant /etc/warrant 2>&1 | head -20
finish
