# Installs the .deb, configures it against the mock provider and starts
# warrant; checks the units, the kernel hooks the daemon attached (through
# `warrant status`, not its log text) and the CA in the system trust store.
# Leaves: mock-provider.service on 127.0.0.2:443 (api.openai.com in
# /etc/hosts), warrant running; shares REAL, PLACEHOLDER, CA_LINE.
. "$T/lib.sh"

REAL="sk-proj-vmtest-real-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
PLACEHOLDER="placeholder-not-a-key"
share REAL "$REAL"
share PLACEHOLDER "$PLACEHOLDER"
printf %s "$REAL" > "$T/real-openai.key"
# The VM's own /etc/hosts: the provider names go to the mock.
echo "127.0.0.2 api.openai.com api.anthropic.com generativelanguage.googleapis.com" >> /etc/hosts

systemd-run --quiet --unit=mock-provider -p Type=exec \
    "$T/mock_provider" --listen 127.0.0.2:443 --ca-out "$T/provider-ca.pem" \
    --record "$T/provider-saw.jsonl" --key "openai=$T/real-openai.key"
check "mock provider listens" python3 "$T/wait_port.py" 127.0.0.2 443 60 \
    || stop_here "no mock provider"

t=$(now)
check "apt install ./warrant.deb" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q $T/warrant_*.deb > $T/apt.log 2>&1 || { cat $T/apt.log; false; }"
note "install=$(since "$t")s"
[ -x /usr/bin/warrant ] || stop_here "warrant is not installed"
check "config is a conffile" grep -q /etc/warrant/warrant.toml /var/lib/dpkg/info/warrant.conffiles
check "credentials dir is 0700" [ "$(stat -c %a /etc/warrant/credentials)" = 700 ]
check "units installed" sh -c "systemctl cat warrant.service warrant.socket warrant-agents.slice > /dev/null"

# The shipped config, with the mock's CA trusted for the openai upstream.
install -m 0644 "$T/provider-ca.pem" /usr/local/share/vmtest-provider-ca.pem
sed -i 's|^credential = "openai"$|&\nca_file = "/usr/local/share/vmtest-provider-ca.pem"|' /etc/warrant/warrant.toml
for provider in openai anthropic gemini; do
    install -m 0600 "$T/real-openai.key" "/etc/warrant/credentials/$provider"
done
check "warrant check-config" warrant check-config /etc/warrant/warrant.toml
t=$(now)
check "systemctl enable --now warrant" systemctl enable --now warrant.service
note "start=$(since "$t")s"
check "warrant is active" systemctl is-active --quiet warrant.service \
    || stop_here "warrant did not start: $(journalctl -u warrant --no-pager -o cat | grep -E 'ERROR|Error' | tail -1)"
# The first start, step by step (the kernel probe, the attach), for the
# console log.
journalctl -u warrant --no-pager -o short-monotonic | sed -n '/starting/,/ready/p' | cut -c1-240
check "warrant.socket is active" systemctl is-active --quiet warrant.socket
check "watchdog configured" sh -c "systemctl show -p WatchdogUSec warrant.service | grep -q 30s"

# What the daemon attached, as `warrant status` reports it: every hook,
# through the mechanism the README's kernel table gives for this kernel.
warrant status --json > "$T/status.json"
python3 - "$T/status.json" <<'PY' > "$T/hooks.txt"
import json, sys
status = json.load(open(sys.argv[1]))
for name, hook in sorted(status["kernel"]["hooks"].items()):
    print(name, "attached" if hook["attached"] else "absent", hook.get("via") or "-")
PY
cat "$T/hooks.txt"
release=$(uname -r)
major_minor=$(echo "$release" | cut -d. -f1-2)
newer_than() { # MAJOR.MINOR: is this kernel at least that?
    [ "$(printf '%s\n%s\n' "$1" "$major_minor" | sort -V | head -1)" = "$1" ]
}
if newer_than 6.10; then exec_start="sched_prepare_exec"; else exec_start="fentry:begin_new_exec"; fi
hook_is() { grep -qx "$1 attached $2" "$T/hooks.txt"; }
check "exec start hook: $exec_start" hook_is exec_start "$exec_start"
check "exec done hook: sched_process_exec" hook_is exec_done "sched_process_exec"
check "prctl(PR_SET_MM) watch: fentry on both syscall entries" \
    hook_is prctl_watch "fentry:__x64_sys_prctl+__ia32_sys_prctl"
check "no kernel feature is missing or degraded" python3 - "$T/status.json" <<'PY'
import json, sys
features = json.load(open(sys.argv[1]))["kernel"]["features"]
bad = [f for f in features if f["state"] != "present"]
for f in bad:
    print("  ", f["feature"], f["state"], f["detail"])
sys.exit(1 if bad else 0)
PY

# The CA in the system trust store, for agents that ignore SSL_CERT_FILE.
warrant ca export > "$T/warrant-ca.pem"
CA_LINE=$(sed -n 2p "$T/warrant-ca.pem")
share CA_LINE "$CA_LINE"
check "warrant ca install" sh -c "warrant ca install > /dev/null 2>&1"
check "the system bundle trusts warrant's CA" grep -qF "$CA_LINE" /etc/ssl/certs/ca-certificates.crt
