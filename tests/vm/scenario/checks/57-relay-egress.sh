# Relays under the shipped unit's hardening: a connection warrant passes
# through (its SNI is not an upstream) is relayed from a socket made in the
# agent's own cgroup, so the agent unit's egress controls apply to it. With
# clone3 refused by RestrictNamespaces=, the child that makes the socket
# moves itself into the agent's cgroup through cgroup.procs, which
# ReadWritePaths= leaves writable below warrant.slice only. A tagged unit
# reaches a TLS service on 127.0.0.3:443 through warrant; the same unit with
# IPAddressDeny=127.0.0.3 does not (the relay is refused and audited), which
# a socket in warrant's own cgroup would not be.
# Leaves: relay-service.service on 127.0.0.3:443 (relay.test), and
# [intercept] passthrough_allow = ["127.0.0.3/32"] in warrant's config.
. "$T/lib.sh"

echo "127.0.0.3 relay.test" >> /etc/hosts
systemd-run --quiet --unit=relay-service -p Type=exec \
    "$T/mock_provider" --listen 127.0.0.3:443 --ca-out "$T/relay-ca.pem" \
    --record "$T/relay-saw.jsonl"
check "a TLS service listens on 127.0.0.3:443" python3 "$T/wait_port.py" 127.0.0.3 443 60 \
    || stop_here "no relay service"
# Loopback is in the default passthrough_deny: this one address is allowed.
sed -i 's|^\[intercept\]$|&\npassthrough_allow = ["127.0.0.3/32"]|' /etc/warrant/warrant.toml
check "warrant check-config" warrant check-config /etc/warrant/warrant.toml
systemctl restart warrant.service
check "warrant active with passthrough_allow" systemctl is-active --quiet warrant.service

relay_unit() { # NAME [PROPERTY...]: relay.py from a fresh unit in the tagged slice
    name=$1
    shift
    systemd-run --quiet --wait --unit="$name" --slice=warrant-agents.slice -p Type=exec "$@" \
        sh -c "python3 $T/relay.py relay.test > $T/$name.out 2>&1"
    cat "$T/$name.out"
}
passthrough_before=$(metric warrant_connections_total 'kind="passthrough"')
relay_unit relay-allowed
check "a tagged unit reaches relay.test through warrant" grep -q "^answered " "$T/relay-allowed.out"
check "warrant relayed it (a passthrough connection)" \
    [ "$(metric warrant_connections_total 'kind="passthrough"')" = "$((${passthrough_before%.*} + 1))" ]
check "the service saw its request" [ "$(count . "$T/relay-saw.jsonl")" -eq 1 ]

audit_before=$(count '"connection_refused"' /var/log/warrant/audit.jsonl)
relay_unit relay-denied -p IPAddressDeny=127.0.0.3
check "with IPAddressDeny=127.0.0.3 on the unit, the relay does not reach it" \
    grep -q "^closed " "$T/relay-denied.out"
check "the service saw nothing more" [ "$(count . "$T/relay-saw.jsonl")" -eq 1 ]
grep '"connection_refused"' /var/log/warrant/audit.jsonl | tail -1 > "$T/relay-refusal.json"
cat "$T/relay-refusal.json"
check "warrant audited the refused relay" \
    [ "$(count '"connection_refused"' /var/log/warrant/audit.jsonl)" -eq $((audit_before + 1)) ]
check "the refusal is the relay's (passthrough)" grep -q '"passthrough: ' "$T/relay-refusal.json"
