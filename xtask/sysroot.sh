#!/usr/bin/env bash
# Builds OUT (which must not exist yet): the C library of Debian SUITE
# (libc6, libc6-dev, libgcc-s1 and the kernel headers), unpacked as a
# sysroot that `cargo xtask package` links the .deb's binaries against, so
# that they need no newer glibc than SUITE has (a binary linked against the
# host's glibc 2.36 asks for GLIBC_2.34 symbols, which Debian 11 lacks).
#   sysroot.sh OUT SUITE
set -euo pipefail
out=$1
suite=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/debian-apt.sh"
[ ! -e "$out" ] || { echo "$out exists" >&2; exit 1; }
work=$(mktemp -d "${out}.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
debian_apt "$work/apt" "$suite"
mkdir -p "$work/debs" "$work/root"
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -q libc6 libc6-dev libgcc-s1 linux-libc-dev)
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done
# Absolute symlinks (lib64/ld-linux-x86-64.so.2 -> /lib/...) would lead the
# linker back to the host's files: make them point inside the sysroot.
find "$work/root" -type l -lname '/*' | while read -r link; do
    target=$(readlink "$link")
    ln -sfn "$(realpath --relative-to="$(dirname "$link")" -m "$work/root$target")" "$link"
done
mv "$work/root" "$out"
echo "sysroot ($suite): $out ($(ls "$out"/usr/lib/x86_64-linux-gnu/libc.so.6 "$out"/lib/x86_64-linux-gnu/libc.so.6 2>/dev/null | head -1))"
