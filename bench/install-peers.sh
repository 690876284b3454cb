#!/usr/bin/env bash
# Installs the peers that the bench compares against (as root): Debian's fuse-overlayfs (C,
# 1.x) and unionfs-fuse, and the Rust fuse-overlayfs 2.0 from crates.io into bench/.peers
# (gitignored, so that it never lands in a commit and never shadows Debian's binary in PATH).
# The bench skips any peer that is missing, so this script is optional.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
echo "== installing Debian packages (fuse3, fuse-overlayfs, unionfs-fuse)"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 fuse-overlayfs unionfs-fuse >/dev/null

echo "== installing fuse-overlayfs 2.0 (Rust) into bench/.peers"
cargo install --locked --root .peers fuse-overlayfs || cargo install --root .peers fuse-overlayfs

echo "== installed:"
for b in /usr/bin/fuse-overlayfs /usr/bin/unionfs .peers/bin/fuse-overlayfs; do
    if [ -x "$b" ]; then echo "  $b"; else echo "  $b: missing"; fi
done
