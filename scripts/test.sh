#!/usr/bin/env bash
# Runs every test: unit tests, and the differential tests against the kernel's overlay
# (as root). Fails if any FUSE or overlay mount is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: must run as root: the differential tests mount the kernel's overlay (the oracle) and FUSE" >&2
  exit 1
fi
# Every test that does not run appends a line KIND<TAB>TEST<TAB>CONTEXT<TAB>REASON here
# (`skip` in tests/src/scenario.rs, unionfs/tests/common, unionfs/src/testskip.rs):
# KIND `needs-root`, `expected` (a documented layout difference: allowed) or `missing`
# (a check that should have run: fails under CI=true). Listed at the end, on stderr.
UNIONFS_SKIP_LOG=$(mktemp /tmp/unionfs-skips.XXXXXX)
export UNIONFS_SKIP_LOG
list_skips() {
  if [ -s "$UNIONFS_SKIP_LOG" ]; then
    echo "== skipped tests ($(wc -l <"$UNIONFS_SKIP_LOG") skips; count, kind, test, context, reason):"
    sort "$UNIONFS_SKIP_LOG" | uniq -c | sed 's/^ */  /'
  else
    echo "== skipped tests: none"
  fi >&2
  rm -f "$UNIONFS_SKIP_LOG"
}
trap list_skips EXIT
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
status=0
if [ -n "$left" ]; then
  echo "mounts left behind by the tests:"; echo "$left"; status=1
fi
if [ "${CI:-}" = true ] && grep -q '^missing' "$UNIONFS_SKIP_LOG"; then
  echo "CI: checks that should have run here were skipped (kind 'missing', listed below)" >&2
  status=1
fi
exit $status
