# `warrant tag` an agent unit that runs the real Python openai SDK with a
# placeholder key: its requests go through warrant and the mock provider
# sees the real key, never the placeholder.
# Leaves: agent.service (tagged, running, appending to $T/agent.jsonl).
. "$T/lib.sh"

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
check "agent makes requests through warrant" wait_for 180 at_least ok_count 3 \
    || stop_here "the tagged agent gets no answer"
check "the mock saw the real key" grep -q "Bearer $REAL" "$T/provider-saw.jsonl"
check "the mock never saw the placeholder" [ "$(count "$PLACEHOLDER" "$T/provider-saw.jsonl")" -eq 0 ]
