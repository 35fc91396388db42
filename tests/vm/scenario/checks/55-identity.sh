# The identity boundary (attest/scope.rs): the slice a workload names is the
# system manager's slice at its exact path, and nothing a user can make
# matches it. A user with a lingering systemd --user (loginctl
# enable-linger) starts a unit in its own `warrant-agents.slice`, a
# name-alike at /user.slice/user-UID.slice/user@UID.service/warrant.slice/
# warrant-agents.slice: it is not tagged, so its request reaches the
# provider (the mock) untouched, with its own placeholder (401), and the
# mock never sees the real key from it; its direct connection to warrant's
# listener is refused. A system unit in the real slice, trusting the same
# CAs, is served with the real key. Leaves: user vmuser, lingering.
. "$T/lib.sh"

U=/run/vmtest-user
useradd --create-home --shell /bin/sh vmuser
uid=$(id -u vmuser)
mkdir -p "$U"
# What the user's unit runs and trusts: warrant's bundle and the mock's CA,
# so that its request would succeed either way (served by warrant with the
# real key, or by the mock with its placeholder) and the answer tells which.
cp "$T/agent.py" "$T/direct.py" "$U/"
cat /var/lib/warrant/trust-bundle.pem "$T/provider-ca.pem" > "$U/both-ca.pem"
chown -R vmuser: "$U"

check "loginctl enable-linger vmuser" loginctl enable-linger vmuser
if ! check "the user's systemd (user@$uid.service) runs" wait_for 120 systemctl is-active --quiet "user@$uid.service"; then
    loginctl list-users --no-pager
    systemctl status --no-pager "user@$uid.service" "user-runtime-dir@$uid.service" 2>&1 | head -30
    journalctl -b --no-pager -o short-monotonic -u "user@$uid.service" -u "user-runtime-dir@$uid.service" \
        -u systemd-logind.service -u dbus.service | tail -40
    stop_here "no user manager for vmuser"
fi
check "the user's manager answers on its private socket" wait_for 60 test -S "/run/user/$uid/systemd/private"
# As the user, through its manager's private socket (no session bus in this
# image: `systemd-run --user` without --wait needs none).
as_user() { runuser -u vmuser -- env XDG_RUNTIME_DIR="/run/user/$uid" "$@"; }
user_unit() { # NAME CMD: a unit of the user's manager in its warrant-agents.slice
    as_user systemd-run --user --quiet --unit="$1" --slice=warrant-agents.slice -p Type=exec \
        -E OPENAI_API_KEY="$PLACEHOLDER" -E SSL_CERT_FILE="$U/both-ca.pem" \
        sh -c "cat /proc/self/cgroup > $U/$1.cgroup; $2 > $U/$1.tmp 2>&1; mv $U/$1.tmp $U/$1.out"
    wait_for 180 test -e "$U/$1.out"
}

real_before=$(count "Bearer $REAL" "$T/provider-saw.jsonl")
placeholder_before=$(count "Bearer $PLACEHOLDER" "$T/provider-saw.jsonl")
check "a user unit in the user's warrant-agents.slice ran" user_unit name-alike "python3 $U/agent.py --once"
cat "$U/name-alike.cgroup" "$U/name-alike.out" 2>&1
check "its cgroup is the name-alike below user@$uid.service" grep -qx \
    "0::/user.slice/user-$uid.slice/user@$uid.service/warrant.slice/warrant-agents.slice/name-alike.service" \
    "$U/name-alike.cgroup"
check "the name-alike is not redirected: the mock answers its placeholder (401)" \
    grep -qx "status=401" "$U/name-alike.out"
check "the mock saw the name-alike's placeholder" \
    [ "$(count "Bearer $PLACEHOLDER" "$T/provider-saw.jsonl")" -eq $((placeholder_before + 1)) ]
check "the mock never saw the real key from it" \
    [ "$(count "Bearer $REAL" "$T/provider-saw.jsonl")" -eq "$real_before" ]

refused_before=$(metric warrant_connections_total 'kind="refused"')
check "the name-alike connected to warrant's listener directly" user_unit name-alike-direct "python3 $U/direct.py"
cat "$U/name-alike-direct.out"
check "the listener closed the name-alike's connection, unanswered" \
    grep -q "^closed-by-listener " "$U/name-alike-direct.out"
check "warrant counted it refused" \
    [ "$(metric warrant_connections_total 'kind="refused"')" = "$((${refused_before%.*} + 1))" ]

# The same request from a system unit in the real slice: served, with the
# real key (the CAs it trusts are the name-alike's).
systemd-run --quiet --wait --unit=real-slice --slice=warrant-agents.slice -p Type=exec \
    -E OPENAI_API_KEY="$PLACEHOLDER" -E SSL_CERT_FILE="$U/both-ca.pem" \
    sh -c "python3 $U/agent.py --once > $U/real-slice.out 2>&1"
cat "$U/real-slice.out"
check "a system unit in warrant-agents.slice is served" grep -qx ok "$U/real-slice.out"
check "the mock saw the real key from it" \
    [ "$(count "Bearer $REAL" "$T/provider-saw.jsonl")" -eq $((real_before + 1)) ]
