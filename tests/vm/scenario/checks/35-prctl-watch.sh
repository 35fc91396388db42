# The prctl(PR_SET_MM) watch works on this kernel, not only attaches: a
# tagged unit that attempts it, through the x86-64 syscall or the 32-bit
# int $0x80 entry, has its requests refused (403), while a fresh unit in the
# same slice is served.
. "$T/lib.sh"

for mode in native int80; do
    systemd-run --quiet --wait --unit="prctl-$mode" --slice=warrant-agents.slice -p Type=exec \
        -E OPENAI_API_KEY="$PLACEHOLDER" -E SSL_CERT_FILE=/var/lib/warrant/trust-bundle.pem \
        sh -c "python3 $T/prctl.py $mode > $T/prctl-$mode.out 2>&1; python3 $T/agent.py --once >> $T/prctl-$mode.out 2>&1"
    cat "$T/prctl-$mode.out"
    check "prctl(PR_SET_MM) via $mode: the unit's requests are refused (403)" grep -qx "status=403" "$T/prctl-$mode.out"
done
systemd-run --quiet --wait --unit=prctl-none --slice=warrant-agents.slice -p Type=exec \
    -E OPENAI_API_KEY="$PLACEHOLDER" -E SSL_CERT_FILE=/var/lib/warrant/trust-bundle.pem \
    sh -c "python3 $T/agent.py --once > $T/prctl-none.out 2>&1"
check "a unit that made no such call is served" grep -qx ok "$T/prctl-none.out"
