#!/usr/bin/env bash
# Runs every test: unit tests, and the differential tests against the kernel's overlay
# (as root). Fails if any FUSE or overlay mount is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p unionfs --bins
cargo test --workspace -- --test-threads=4
# The scenarios again with file data through the daemon (no passthrough, as unprivileged
# mounts run): reads, writes and the set-id rules then take other code paths.
DIFFTEST_UNIONFS_OPTS=nopassthrough cargo test -p difftests --test scenarios --test acl --test fileattr -- --test-threads=4
# The differential suite again with the layers on other filesystems than one: two tmpfs,
# ext4 lowers under a tmpfs upper, lowers on two filesystems (inode numbers, st_dev and
# file handles differ there); with both data paths.
for layout in tmpfs2 ext4-tmpfs split-lowers; do
  for opts in "" nopassthrough; do
    echo "== differential suite, layout $layout, unionfs options '${opts:-defaults}'"
    DIFFTEST_LAYOUT=$layout DIFFTEST_UNIONFS_OPTS=$opts cargo test -p difftests -- --test-threads=4
  done
done
# The tests mount only under these scratch prefixes (difftests, the daemon's own tests,
# runbox's containers).
left=$(grep -E ' - (fuse[^ ]*|overlay|tmpfs) ' /proc/self/mountinfo | grep -E ' /tmp/(dt-|unionfs-it-|runbox-it-)' || true)
if [ -n "$left" ]; then
  echo "mounts left behind by the tests:"; echo "$left"; exit 1
fi
