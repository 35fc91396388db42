#!/usr/bin/env bash
# Builds the VM test image and kernels into OUT (a directory that must not
# exist yet; the caller names it after a hash of this recipe, so a changed
# recipe gets a fresh image and an unchanged one is reused):
#   OUT/rootfs.img        ext4, booted read-only with qemu snapshot=on
#   OUT/vmlinuz-<tag>     Debian cloud kernels, extracted from their .debs
#   OUT/kernels           "<tag> <version>" per line
# Needs root, debootstrap, apt-get (the host's bookworm sources), e2fsprogs
# and pip (wheels for the guest's Python, installed offline into the image:
# the guest has no network).
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")" && pwd)
[ ! -e "$out" ] || { echo "$out exists" >&2; exit 1; }
work=$(mktemp -d "${out}.tmp.XXXXXX")
cleanup() {
    # debootstrap leaves /proc and /sys mounted in the chroot when it fails.
    for m in proc sys dev/pts dev; do
        umount "$work/rootfs/$m" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# The Debian mirror the host's apt already uses (debootstrap does not read
# sources.list); WARRANT_VM_MIRROR overrides it.
mirror=${WARRANT_VM_MIRROR:-}
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "no Debian mirror found in the host's apt sources; set WARRANT_VM_MIRROR" >&2; exit 1; }

echo "vm image: kernels"
# The kernels users run on bookworm: 6.1 (bookworm) and 6.12 (the
# bookworm-security backport), newest of each, resolved through the
# meta-packages so that the recipe survives Debian dropping old builds.
resolve() {
    apt-cache depends "$1" | awk -v pat="$2" '$1 == "Depends:" && $2 ~ pat {print $2; exit}'
}
k61=$(resolve linux-image-cloud-amd64 '^linux-image-6\.1\.')
k612=$(resolve linux-image-6.12-cloud-amd64 '^linux-image-6\.12\.')
if [ -z "$k61" ] || [ -z "$k612" ]; then
    # A fresh machine may not have read its package lists yet.
    apt-get update -qq
    k61=$(resolve linux-image-cloud-amd64 '^linux-image-6\.1\.')
    k612=$(resolve linux-image-6.12-cloud-amd64 '^linux-image-6\.12\.')
fi
[ -n "$k61" ] && [ -n "$k612" ] || { echo "cannot resolve the cloud kernels (apt-get update?)" >&2; exit 1; }
mkdir -p "$work/debs" "$work/k"
(cd "$work/debs" && apt-get download -q "$k61" "$k612" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/k"; done

echo "vm image: debootstrap (${mirror})"
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,kmod,python3,ca-certificates,iproute2,procps \
    bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
root=$work/rootfs

echo "vm image: kernel modules, guest configuration"
: > "$work/kernels"
for tag in 6.1 6.12; do
    pkg=$k61; [ "$tag" = 6.12 ] && pkg=$k612
    version=${pkg#linux-image-}
    cp "$work/k/boot/vmlinuz-$version" "$work/vmlinuz-$tag"
    # /lib is a symlink to usr/lib in bookworm (merged /usr).
    mkdir -p "$root/usr/lib/modules"
    cp -a "$work/k/lib/modules/$version" "$root/usr/lib/modules/"
    chroot "$root" depmod -a "$version"
    echo "$tag $version" >> "$work/kernels"
done

# Python openai SDK: wheels for the guest's CPython 3.11, unpacked into its
# site directory (pip is not in the image; the guest has no network).
python3 -m pip install --quiet --disable-pip-version-check --no-compile \
    --no-warn-conflicts --root-user-action=ignore \
    --target "$root/usr/local/lib/python3.11/dist-packages" \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    openai
# Byte-compiled now: under TCG, compiling the SDK at each import costs
# seconds per agent start.
chroot "$root" python3 -m compileall -q -j 2 /usr/local/lib/python3.11/dist-packages > /dev/null
chroot "$root" python3 -c 'import openai; print("vm image: openai", openai.__version__)'

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

echo "vm image: ext4"
truncate -s 2G "$work/rootfs.img"
mkfs.ext4 -q -F -L root -d "$root" "$work/rootfs.img"

mkdir -p "$out"
mv "$work/rootfs.img" "$work"/vmlinuz-* "$work/kernels" "$out/"
touch "$out/ready"
echo "vm image: done: $out"
