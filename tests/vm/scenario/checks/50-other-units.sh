# Units warrant must leave alone or refuse: an untagged unit reaches the
# provider (the mock) itself, with its own placeholder (401); a unit in
# another slice that connects to warrant's listener directly is refused:
# the listener closes the connection without a TLS answer, warrant counts
# the refusal (warrant_connections_total{kind="refused"}) and audits it.
. "$T/lib.sh"

systemd-run --quiet --wait --pipe -p Type=exec -E OPENAI_API_KEY=$PLACEHOLDER \
    -E SSL_CERT_FILE=$T/provider-ca.pem python3 "$T/agent.py" --once > "$T/untagged.out" 2>&1
cat "$T/untagged.out"
check "untagged unit reaches the mock with its placeholder (401)" grep -qx "status=401" "$T/untagged.out"
check "the mock saw the placeholder from the untagged unit" grep -q "Bearer $PLACEHOLDER" "$T/provider-saw.jsonl"

refused_before=$(metric warrant_connections_total 'kind="refused"')
audit_before=$(count '"connection_refused"' /var/log/warrant/audit.jsonl)
systemd-run --quiet --wait --pipe --slice=other-test.slice python3 "$T/direct.py" > "$T/direct.out" 2>&1
cat "$T/direct.out"
check "a unit in another slice is closed by the listener, unanswered" grep -q "^closed-by-listener " "$T/direct.out"
check "warrant counted one refused connection" \
    [ "$(metric warrant_connections_total 'kind="refused"')" = "$((${refused_before%.*} + 1))" ]
check "warrant audited the refusal" [ "$(count '"connection_refused"' /var/log/warrant/audit.jsonl)" -eq $((audit_before + 1)) ]
