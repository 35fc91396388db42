# Untag, then purge: the drop-in, state, logs, pins, config and the CA in
# the system bundle are gone.
. "$T/lib.sh"

warrant untag agent > /dev/null
check "untag removes the drop-in" [ ! -e /etc/systemd/system/agent.service.d/50-warrant.conf ]
check "pins exist before purge" [ -d /sys/fs/bpf/warrant ]
check "apt purge warrant" sh -c "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q warrant > $T/purge.log 2>&1 || { cat $T/purge.log; false; }"
check "purge removed state, logs, pins and config" sh -c "[ ! -e /var/lib/warrant ] && [ ! -e /var/log/warrant ] && [ ! -e /sys/fs/bpf/warrant ] && [ ! -e /etc/warrant ]"
check "purge removed the CA from the system bundle" sh -c "! grep -qF '$CA_LINE' /etc/ssl/certs/ca-certificates.crt"
ls -la /var/lib/warrant /var/log/warrant /sys/fs/bpf/warrant /etc/warrant 2>&1 | head -20
