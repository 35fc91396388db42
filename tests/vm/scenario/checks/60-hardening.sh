# The units as this systemd reads them: no option it does not know
# (`systemd-analyze verify` is silent about warrant's units), the hardening
# in effect (capabilities, system call filter), and the exposure score.
. "$T/lib.sh"

systemd-analyze verify warrant.service warrant.socket warrant-agents.slice > "$T/verify.out" 2>&1
verify_rc=$?
cat "$T/verify.out"
check "systemd-analyze verify: exit status 0" [ $verify_rc -eq 0 ]
check "systemd-analyze verify: nothing said about warrant's units" \
    sh -c "! grep -q 'warrant' '$T/verify.out'"
caps=$(systemctl show -p CapabilityBoundingSet --value warrant.service)
log "CapabilityBoundingSet=$caps"
check "capability bounding set is exactly the five" python3 -c "
import sys
got = set(sys.argv[1].split())
want = {'cap_bpf', 'cap_net_admin', 'cap_perfmon', 'cap_sys_ptrace', 'cap_dac_read_search'}
sys.exit(0 if got == want else f'got {sorted(got)}')" "$caps"
check "LimitMEMLOCK is unlimited (BPF maps are charged to it before Linux 5.11)" \
    [ "$(systemctl show -p LimitMEMLOCK --value warrant.service)" = infinity ]

systemd-analyze security --no-pager warrant.service > "$T/security.out" 2>&1
cat "$T/security.out"
EXPOSURE=$(sed -n 's/.*Overall exposure level for warrant.service: \([0-9.]*\).*/\1/p' "$T/security.out")
note "exposure=${EXPOSURE:-?}"
check "systemd-analyze exposure <= 3.0" python3 -c "import sys; sys.exit(0 if float(sys.argv[1] or 99) <= 3.0 else 1)" "${EXPOSURE:-}"
