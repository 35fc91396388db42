# The gateway unit beside the host unit: warrant-gateway.service as the
# package ships it, started with a configuration for agents with no node
# (an RS256 issuer's JWKS file, a base URL), its exposure measured against
# the host unit's, a request through it with the official SDK reaching the
# mock with the real key, and one without a token refused. Leaves nothing:
# the gateway is stopped and its files removed (90-purge checks /etc/warrant
# goes).
. "$T/lib.sh"

check "warrant-gateway.service installed, not enabled" sh -c \
    "systemctl cat warrant-gateway.service > /dev/null && ! systemctl is-enabled --quiet warrant-gateway.service"
systemd-analyze verify warrant-gateway.service > "$T/gw-verify.out" 2>&1
verify_rc=$?
cat "$T/gw-verify.out"
check "systemd-analyze verify warrant-gateway.service: silent" \
    sh -c "[ $verify_rc -eq 0 ] && ! grep -q 'warrant' '$T/gw-verify.out'"

# Its exposure beside the host unit's, both as this systemd scores them.
exposure() {
    systemd-analyze security --no-pager "$1" > "$T/security-$1.out" 2>&1
    sed -n "s/.*Overall exposure level for $1: \([0-9.]*\).*/\1/p" "$T/security-$1.out"
}
HOST_EXPOSURE=$(exposure warrant.service)
GW_EXPOSURE=$(exposure warrant-gateway.service)
cat "$T/security-warrant-gateway.service.out"
note "gateway_exposure=${GW_EXPOSURE:-?}"
log "exposure: warrant.service ${HOST_EXPOSURE:-?}, warrant-gateway.service ${GW_EXPOSURE:-?}"
check "gateway exposure <= 2.0 and below the host unit's" python3 -c "
import sys
gw, host = float(sys.argv[1] or 99), float(sys.argv[2] or 0)
sys.exit(0 if gw <= 2.0 and gw < host else 1)" "${GW_EXPOSURE:-}" "${HOST_EXPOSURE:-}"

command -v openssl > /dev/null || stop_here "no openssl in the image (ca-certificates depends on it)"
d=$T/gateway
mkdir -p "$d"
# The gateway's certificate (for 127.0.0.3) and key; the key reaches the
# DynamicUser through LoadCredential, as the README says.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=warrant-gateway -addext subjectAltName=IP:127.0.0.3 \
    -keyout /etc/warrant/gateway.key -out /etc/warrant/gateway.pem 2> "$d/openssl.log"
chmod 0600 /etc/warrant/gateway.key
chmod 0644 /etc/warrant/gateway.pem
openssl genrsa -out "$d/issuer.pem" 2048 2> /dev/null
python3 "$T/jwt.py" jwks "$d/issuer.pem" > /etc/warrant/vmtest-jwks.json
chmod 0644 /etc/warrant/vmtest-jwks.json
cat > /etc/warrant/gateway.toml <<TOML
[daemon]
state_dir = "/var/lib/warrant-gateway"
audit_log = "/var/log/warrant-gateway/audit.jsonl"
metrics = "127.0.0.1:9465"

[control]
socket = "/run/warrant-gateway/control.sock"

[gateway]
listen = "127.0.0.3:8443"
certificate = "/etc/warrant/gateway.pem"
key = "/run/credentials/warrant-gateway.service/gateway.key"
name = "gw-vmtest"
routes = { openai = "api.openai.com" }

[[gateway.issuer]]
issuer = "https://issuer.vmtest"
jwks_file = "/etc/warrant/vmtest-jwks.json"

[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "openai"
ca_file = "/usr/local/share/vmtest-provider-ca.pem"

[[credential]]
name = "openai"
source = "systemd"
id = "openai"

[[workload]]
name = "ci"
issuer = "https://issuer.vmtest"
subject = "repo:warrant/**"

[[policy]]
workload = "ci"
upstreams = ["api.openai.com"]
TOML
chmod 0644 /etc/warrant/gateway.toml
mkdir -p /etc/systemd/system/warrant-gateway.service.d
cat > /etc/systemd/system/warrant-gateway.service.d/vmtest.conf <<UNIT
[Service]
LoadCredential=gateway.key:/etc/warrant/gateway.key
LoadCredential=openai:/etc/warrant/credentials/openai
UNIT
systemctl daemon-reload
check "warrant check-config gateway.toml" warrant check-config /etc/warrant/gateway.toml
check "systemctl start warrant-gateway" systemctl start warrant-gateway.service
check "warrant-gateway is active" systemctl is-active --quiet warrant-gateway.service \
    || journalctl -u warrant-gateway --no-pager -o cat | tail -20
pid=$(systemctl show -p MainPID --value warrant-gateway.service)
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
log "gateway pid=$pid uid=$uid CapEff=$capeff"
check "the gateway runs as a dynamic user with no capabilities" \
    sh -c "[ -n '$uid' ] && [ '$uid' != 0 ] && [ '$capeff' = 0000000000000000 ]"

TOKEN=$(python3 "$T/jwt.py" token "$d/issuer.pem" https://issuer.vmtest gw-vmtest "repo:warrant/agent:ref:refs/heads/main")
saw_before=$(count "$REAL" "$T/provider-saw.jsonl")
cat > "$d/sdk.py" <<'PY'
import os, ssl, sys, openai
ctx = ssl.create_default_context(cafile="/etc/warrant/gateway.pem")
client = openai.OpenAI(
    base_url="https://127.0.0.3:8443/openai/v1",
    api_key="placeholder-not-a-key",
    default_headers={"x-warrant-token": sys.argv[1]} if sys.argv[1] else {},
    http_client=openai.DefaultHttpxClient(verify=ctx),
    max_retries=0,
)
try:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    print("ok" if r.choices else "empty")
except openai.APIStatusError as e:
    print(f"status {e.status_code}")
PY
out=$(python3 "$d/sdk.py" "$TOKEN" 2>&1)
log "sdk with a token: $out"
check "the official SDK through the gateway's base URL, with a token: served" [ "$out" = ok ]
check "the mock saw the real key from the gateway" \
    sh -c "[ $(count "$REAL" "$T/provider-saw.jsonl") -gt $saw_before ]"
out=$(python3 "$d/sdk.py" "" 2>&1)
log "sdk without a token: $out"
check "without a token: 401" [ "$out" = "status 401" ]
check "the gateway's audit names the token's issuer and subject" wait_for 10 \
    grep -q '"subject":"repo:warrant/agent:ref:refs/heads/main"' /var/log/warrant-gateway/audit.jsonl
check "the token is not in the audit log or the journal" sh -c \
    "! grep -qF '$TOKEN' /var/log/warrant-gateway/audit.jsonl && ! journalctl -u warrant-gateway --no-pager -o cat | grep -qF '$TOKEN'"

systemctl stop warrant-gateway.service
rm -rf /etc/systemd/system/warrant-gateway.service.d
rm -f /etc/warrant/gateway.toml /etc/warrant/gateway.pem /etc/warrant/gateway.key /etc/warrant/vmtest-jwks.json
systemctl daemon-reload
