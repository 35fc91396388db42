#!/usr/bin/env bash
# Builds one VM test image and its kernels into OUT (a directory that must
# not exist yet; the caller names it after a hash of this recipe and of the
# arguments, so a changed recipe gets a fresh image and an unchanged one is
# reused):
#   OUT/rootfs.img        ext4, booted read-only with qemu snapshot=on
#   OUT/vmlinuz-<tag>     Debian cloud kernels, extracted from their .debs
#   OUT/kernels           "<tag> <version>" per line
#
#   build-image.sh OUT SUITE TAG...
#     SUITE  the Debian release of the root file system: bookworm (systemd
#            252, Python 3.11) or bullseye (systemd 247, Python 3.9)
#     TAG    a kernel line of that release, e.g. 6.1 and 6.12 for bookworm,
#            5.10 for bullseye: the newest cloud kernel of that line
#
# Needs root, debootstrap, apt-get, e2fsprogs and pip (wheels for the
# guest's Python, installed offline into the image: the guest has no
# network). The host's apt state is not touched: the suite's package lists
# go to a private directory (xtask/debian-apt.sh), so a bookworm host builds
# a bullseye image.
set -euo pipefail
out=$1
suite=$2
shift 2
tags=("$@")
[ ${#tags[@]} -gt 0 ] || { echo "usage: $0 OUT SUITE TAG..." >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
[ ! -e "$out" ] || { echo "$out exists" >&2; exit 1; }

# What differs between the releases the matrix boots.
case $suite in
    bookworm)
        python=3.11
        # The version the host tests pin (xtask/src/setup.rs).
        openai=(openai==3.57.0)
        ;;
    bullseye)
        python=3.9
        # openai 3 needs Python 3.10; 2.48 is the last release for 3.9.
        # pip evaluates dependency markers with the host's Python (3.11),
        # so what only older ones need is named: anyio's exceptiongroup.
        openai=(openai==2.48.0 exceptiongroup)
        ;;
    *) echo "unknown suite $suite (bookworm or bullseye)" >&2; exit 2 ;;
esac

work=$(mktemp -d "${out}.tmp.XXXXXX")
cleanup() {
    # debootstrap leaves /proc and /sys mounted in the chroot when it fails.
    for m in proc sys dev/pts dev; do
        umount "$work/rootfs/$m" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

echo "vm image ($suite): kernels ${tags[*]}"
# The suite's package lists in a private apt state (the host may run
# another release): its kernels are resolved and fetched from them.
. "$here/../../xtask/debian-apt.sh"
debian_apt "$work/apt" "$suite"
# The newest kernel of a line, through the meta-packages (so that the recipe
# survives Debian dropping old builds): the release's own cloud kernel
# (linux-image-cloud-amd64), or a backported line's meta-package
# (linux-image-6.12-cloud-amd64 in bookworm-security).
resolve() {
    local tag=$1 meta pkg
    for meta in linux-image-cloud-amd64 "linux-image-$tag-cloud-amd64"; do
        pkg=$(apt-cache "${apt_opts[@]}" depends "$meta" 2>/dev/null \
            | awk -v pat="^linux-image-${tag//./\\.}\\." '$1 == "Depends:" && $2 ~ pat {print $2; exit}' || true)
        if [ -n "$pkg" ]; then
            echo "$pkg"
            return
        fi
    done
}
mkdir -p "$work/debs" "$work/k"
packages=()
for tag in "${tags[@]}"; do
    pkg=$(resolve "$tag")
    [ -n "$pkg" ] || { echo "no $tag cloud kernel in $suite ($mirror)" >&2; exit 1; }
    packages+=("$pkg")
done
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -q "${packages[@]}")
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/k"; done

echo "vm image ($suite): debootstrap (${mirror})"
# libpam-systemd: a user's systemd (user@UID.service, started by `loginctl
# enable-linger`) needs pam_systemd for its XDG_RUNTIME_DIR.
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,libpam-systemd,kmod,python3,ca-certificates,iproute2,procps \
    "$suite" "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
root=$work/rootfs

echo "vm image ($suite): kernel modules, guest configuration"
: > "$work/kernels"
for i in "${!tags[@]}"; do
    tag=${tags[$i]}
    version=${packages[$i]#linux-image-}
    cp "$work/k/boot/vmlinuz-$version" "$work/vmlinuz-$tag"
    # Through /lib: a symlink to usr/lib on merged-/usr systems.
    mkdir -p "$root/lib/modules"
    cp -a "$work/k/lib/modules/$version" "$root/lib/modules/"
    chroot "$root" depmod -a "$version"
    echo "$tag $version" >> "$work/kernels"
done

# Python openai SDK: wheels for the guest's CPython, unpacked into its site
# directory (pip is not in the image; the guest has no network).
site=/usr/local/lib/python$python/dist-packages
python3 -m pip install --quiet --disable-pip-version-check --no-compile \
    --no-warn-conflicts --root-user-action=ignore \
    --target "$root$site" \
    --only-binary=:all: --implementation cp --python-version "$python" --abi "cp${python/./}" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    "${openai[@]}"
# Byte-compiled now: under TCG, compiling the SDK at each import costs
# seconds per agent start.
# One process: -j needs POSIX semaphores, and the chroot has no /dev/shm.
chroot "$root" "python$python" -m compileall -q "$site" > /dev/null
chroot "$root" python3 -c 'import openai, sys; print("vm image: Python", sys.version.split()[0], "openai", openai.__version__)'

# One Mozilla root in the guest's trust store, not 140: it has no network,
# and update-ca-certificates (run by `warrant ca install` and by purge)
# rehashes every certificate there, which takes minutes under TCG on Debian
# 11. Not none: with an empty set Debian's update-ca-certificates --fresh
# leaves the old bundle in place, which no real host would see.
sed -i '0,/^mozilla\//! s|^mozilla/|!mozilla/|' "$root/etc/ca-certificates.conf"
chroot "$root" update-ca-certificates --fresh > /dev/null

echo warrant-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost warrant-vm\n::1 localhost\n' > "$root/etc/hosts"
# Faster, quieter boots: no gettys, no timers, no hypervisor modules.
for unit in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer \
    systemd-timesyncd.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
printf 'blacklist kvm_amd\nblacklist kvm_intel\nblacklist kvm\nblacklist ata_piix\n' \
    > "$root/etc/modprobe.d/warrant-vm.conf"
# The test driver: unpacks the input disk and runs its driver.sh.
install -m 0755 "$here/guest/vmtest-boot" "$root/usr/local/sbin/vmtest-boot"
install -m 0644 "$here/guest/vmtest.service" "$root/etc/systemd/system/vmtest.service"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf ../vmtest.service "$root/etc/systemd/system/multi-user.target.wants/vmtest.service"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

echo "vm image ($suite): ext4"
truncate -s 2G "$work/rootfs.img"
# Without orphan_file (e2fsprogs 1.47 knows it, and a newer host may make it
# a default): Linux 5.10 cannot mount it read-write. Older e2fsprogs do not
# know the name, and do not make the feature either.
if mkfs.ext4 -O ^orphan_file -n -q -F "$work/rootfs.img" > /dev/null 2>&1; then
    no_orphan_file=(-O ^orphan_file)
else
    no_orphan_file=()
fi
mkfs.ext4 -q -F -L root "${no_orphan_file[@]}" -d "$root" "$work/rootfs.img"

mkdir -p "$out"
mv "$work/rootfs.img" "$work"/vmlinuz-* "$work/kernels" "$out/"
touch "$out/ready"
echo "vm image ($suite): done: $out"
