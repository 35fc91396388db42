# Fail closed while warrant is down: with warrant.service and its socket
# stopped, the pinned eBPF programs still send a tagged connection to the
# listener's address, where nothing listens: the agent gets ECONNREFUSED,
# exactly (a connection that escaped to the provider would reach the mock,
# which listens, and fail TLS verification instead), and the mock sees
# nothing. Starts both units again and checks a request succeeds.
. "$T/lib.sh"

once_tagged() { # UNIT OUT: one agent request from a fresh unit in the tagged slice
    systemd-run --quiet --wait --unit="$1" --slice=warrant-agents.slice -p Type=exec \
        -E OPENAI_API_KEY="$PLACEHOLDER" -E SSL_CERT_FILE=/var/lib/warrant/trust-bundle.pem \
        sh -c "python3 $T/agent.py --once > $2 2>&1"
}

systemctl stop warrant.socket warrant.service
check "warrant.service and warrant.socket are stopped" sh -c \
    "! systemctl is-active --quiet warrant.service && ! systemctl is-active --quiet warrant.socket"
check "the pinned programs stay" [ -d /sys/fs/bpf/warrant ]
saw_before=$(count . "$T/provider-saw.jsonl")
once_tagged down-agent "$T/down.out"
cat "$T/down.out"
check "a tagged request while warrant is down gets ECONNREFUSED" grep -qx "error=ECONNREFUSED" "$T/down.out"
check "the mock saw nothing of it" [ "$(count . "$T/provider-saw.jsonl")" -eq "$saw_before" ]

systemctl start warrant.socket warrant.service
check "warrant is back" systemctl is-active --quiet warrant.service
once_tagged up-agent "$T/up.out"
cat "$T/up.out"
check "a tagged request succeeds again" grep -qx ok "$T/up.out"
