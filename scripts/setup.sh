#!/usr/bin/env bash
# Installs what unionfs needs on a fresh Debian machine (as root), builds it, and mounts a
# small demo union that shows a copy-up and a whiteout; then unmounts it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
echo "== installing Debian packages (fuse3, attr, acl, busybox-static, uidmap)"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 attr acl busybox-static uidmap >/dev/null

echo "== building unionfs"
cargo build --release -p unionfs -p runner
bin="$PWD/target/release/unionfs"

demo=$(mktemp -d /tmp/unionfs-demo.XXXXXX)
mkdir -p "$demo"/{lower,upper,work,merged}
mkdir "$demo/lower/etc"
echo "from the image" > "$demo/lower/etc/motd"
echo "delete me" > "$demo/lower/old.txt"
"$bin" -o "lowerdir=$demo/lower,upperdir=$demo/upper,workdir=$demo/work" "$demo/merged"
cleanup() { umount "$demo/merged" 2>/dev/null || fusermount3 -u "$demo/merged" 2>/dev/null || true; }
trap cleanup EXIT

echo "== merged view"; ls -l "$demo/merged" "$demo/merged/etc"
echo "== append to etc/motd (copy-up) and remove old.txt (whiteout)"
echo "changed in the container" >> "$demo/merged/etc/motd"
rm "$demo/merged/old.txt"
echo "== merged etc/motd:"; cat "$demo/merged/etc/motd"
echo "== lower is untouched:"; cat "$demo/lower/etc/motd"
echo "== upper now holds the copy and a whiteout (char device 0/0):"
ls -l "$demo/upper" "$demo/upper/etc"
getfattr -d -m 'trusted.overlay' -e hex "$demo/upper/etc/motd" 2>/dev/null || true
cleanup
trap - EXIT
echo "== demo unmounted; its files are in $demo"
