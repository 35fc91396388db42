# `warrant doctor` on the installed host, then on one broken on purpose.
# Installed and tagged (10-install, 20-tagged-agent), no check fails (exit
# 0) and the kernel's features, the tagged agent's slice and TLS trust,
# systemd and the listeners pass. Then a world-readable credential file and
# an override that points the agent's SSL_CERT_FILE at the system bundle:
# doctor names each problem with its fix and exits 1. perf_event_paranoid =
# 3 (Debian's default) is set too and passes: every kernel of the matrix
# attaches the prctl watch by fentry, so no perf event is needed.
# Leaves: everything as it found it (the sysctl, the file's mode, no
# override).
. "$T/lib.sh"

warrant doctor > "$T/doctor.out" 2>&1
rc=$?
cat "$T/doctor.out"
check "doctor: nothing fails on the installed host (exit 0)" [ $rc -eq 0 ]
check "doctor: no kernel feature fails" sh -c "! grep -q '^FAIL  kernel' $T/doctor.out"
check "doctor: the kernel's connect hooks pass" grep -q "^pass  kernel connect_hooks" "$T/doctor.out"
check "doctor: perf_event_paranoid passes whatever its value (the prctl watch attaches by fentry)" \
    grep -q "^pass  perf_event_paranoid .*by fentry\|^pass  perf_event_paranoid *[012] " "$T/doctor.out"
check "doctor: agent.service runs in the agents' slice" grep -q "^pass  unit agent.service: slice" "$T/doctor.out"
check "doctor: agent.service trusts warrant's bundle" grep -q "^pass  unit agent.service: TLS trust" "$T/doctor.out"
check "doctor: systemd's version" grep -Eq "^pass  systemd +systemd [0-9]+" "$T/doctor.out"
check "doctor: the listener accepts" grep -q "^pass  listener (IPv4)" "$T/doctor.out"
check "doctor: the daemon answers, its audit log is healthy" sh -c "grep -q '^pass  daemon' $T/doctor.out && grep -q '^pass  audit log' $T/doctor.out"

# Broken on purpose.
paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)
echo 3 > /proc/sys/kernel/perf_event_paranoid
chmod 0644 /etc/warrant/credentials/gemini
mkdir -p /etc/systemd/system/agent.service.d
printf '[Service]\nEnvironment=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n' \
    > /etc/systemd/system/agent.service.d/60-vmtest-override.conf
systemctl daemon-reload
warrant doctor > "$T/doctor-broken.out" 2>&1
rc=$?
cat "$T/doctor-broken.out"
check "doctor (broken): exit 1" [ $rc -eq 1 ]
check "doctor (broken): perf_event_paranoid = 3 is no problem where fentry serves the prctl watch" \
    grep -q "^pass  perf_event_paranoid *3: .*by fentry" "$T/doctor-broken.out"
check "doctor (broken): the loose credential file fails, with chmod as the fix" sh -c \
    "grep -q '^FAIL  credential gemini .*mode 0644' $T/doctor-broken.out && grep -q 'fix: chmod 0600 /etc/warrant/credentials/gemini' $T/doctor-broken.out"
check "doctor (broken): the agent's SSL_CERT_FILE is named" grep -q \
    "^WARN  unit agent.service: TLS trust .*SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" "$T/doctor-broken.out"
check "doctor (broken): its fix is removing the overriding line (warrant tag would change nothing)" grep -q \
    "fix: a drop-in read after warrant's 50-warrant.conf sets Environment=: find it with systemctl cat agent.service" "$T/doctor-broken.out"

# Put back.
echo "$paranoid" > /proc/sys/kernel/perf_event_paranoid
chmod 0600 /etc/warrant/credentials/gemini
rm -f /etc/systemd/system/agent.service.d/60-vmtest-override.conf
systemctl daemon-reload
warrant doctor > /dev/null 2>&1
check "doctor: passes again once put back" [ $? -eq 0 ]
