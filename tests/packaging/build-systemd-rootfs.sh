#!/usr/bin/env bash
# Builds the root file system of the packaged-systemd test's container
# (tests/e2e/packaged_systemd.rs imports it with `podman import`): Debian
# bookworm from deb.debian.org by debootstrap, with systemd as init, apt
# (for `apt-get purge`) and a non-root user (uid 1000, "agent") to call
# attestd as. Made once per recipe: the tarball is cached outside the
# checkout ($ATTESTD_PEER_CACHE, default /var/cache/attestd-test-peers) under
# a name holding this script's hash, so editing the recipe rebuilds it and
# nothing else does. Prints the tarball's path.
#   tests/packaging/build-systemd-rootfs.sh
#     -> /var/cache/attestd-test-peers/systemd-rootfs-<hash>.tar
# Needs root and debootstrap (tests/run-all.sh installs it). About 3 minutes
# cold (downloads about 50 MB), nothing warm.
set -euo pipefail
cache=${ATTESTD_PEER_CACHE:-/var/cache/attestd-test-peers}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
recipe=$(sha256sum "$0" | cut -c1-16)
tarball="$cache/systemd-rootfs-$recipe.tar"
if [[ -f "$tarball" ]]; then
    echo "$tarball"
    exit 0
fi
mkdir -p -m 0755 "$cache"
echo "==> debootstrap bookworm into $tarball (once per recipe; cached there)" >&2
rootfs=$(mktemp -d "$cache/systemd-rootfs.XXXXXX")
trap 'rm -rf "$rootfs" "$tarball.partial"' EXIT
debootstrap --variant=minbase --include=systemd,systemd-sysv \
    bookworm "$rootfs" "$mirror" >&2
# The caller of other uids.
chroot "$rootfs" useradd --uid 1000 --user-group --create-home --shell /bin/sh agent
# Quiet, quick boots: no apt timers firing mid-test, no console getty.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
    console-getty.service getty@tty1.service systemd-networkd-wait-online.service; do
    ln -sfn /dev/null "$rootfs/etc/systemd/system/$unit"
done
# podman gives the container its own machine id.
: > "$rootfs/etc/machine-id"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*_Packages
tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.partial" .
mv "$tarball.partial" "$tarball"
echo "$tarball"
