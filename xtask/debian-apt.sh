# Sourced by tests/vm/build-image.sh and xtask/sysroot.sh: apt for another
# Debian release than the host's, without touching the host's apt state.
#
#   debian_apt DIR SUITE   the suite's package lists (main, updates and
#                          security) in DIR; sets the array `apt_opts` for
#                          apt-get/apt-cache, and `mirror`
#
# The mirrors are those the host's apt already uses (WARRANT_VM_MIRROR and
# WARRANT_VM_SECURITY_MIRROR override them). Debian ships its newest kernels
# and C library fixes in the security suite, hence the three.
debian_apt() {
    local dir=$1 suite=$2 security keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    mirror=${WARRANT_VM_MIRROR:-}
    security=${WARRANT_VM_SECURITY_MIRROR:-}
    [ -n "$mirror" ] || mirror=$(_debian_apt_uris | grep -v security | head -1 || true)
    [ -n "$security" ] || security=$(_debian_apt_uris | grep security | head -1 || true)
    if [ -z "$mirror" ]; then
        echo "no Debian mirror found in the host's apt sources; set WARRANT_VM_MIRROR" >&2
        return 1
    fi
    [ -n "$security" ] || security=${mirror%/debian}/debian-security
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    cat > "$dir/sources.list" <<SOURCES
deb [signed-by=$keyring] $mirror $suite main
deb [signed-by=$keyring] $mirror $suite-updates main
deb [signed-by=$keyring] $security $suite-security main
SOURCES
    apt_opts=(
        -o "Dir::Etc::SourceList=$dir/sources.list"
        -o "Dir::Etc::SourceParts=/nonexistent"
        -o "Dir::State::Lists=$dir/lists"
        -o "Dir::Cache=$dir/cache"
        -o "Dir::State::Status=/dev/null"
        # The private directories belong to root; apt's _apt sandbox could
        # not write them.
        -o "APT::Sandbox::User=root"
    )
    apt-get "${apt_opts[@]}" update -qq
}

# The URIs of the host's Debian sources (deb822 and one-line formats).
_debian_apt_uris() {
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/debian.sources
    fi
    if [ -f /etc/apt/sources.list ]; then
        awk '$1 == "deb" {print $2}' /etc/apt/sources.list
    fi
}
