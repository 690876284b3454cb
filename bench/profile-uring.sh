#!/bin/bash
# Profiles metadata workloads on unionfs through /dev/fuse (uring=off) and FUSE over io_uring
# (uring=on), twice each: wall time, context switches of the whole machine (perf stat -a) and the
# daemon's CPU ticks. As root, after cargo build --release -p unionfs; sets the fuse module's
# enable_uring to Y under the same lock as the tests and bench, and puts it back. Needs perf
# (Debian: linux-perf). README, Performance.
set -u
B=$(dirname "$0")/../target/release/unionfs
S=/tmp/prof.$$
mkdir -p $S/l $S/u $S/w $S/m
for d in $(seq 1 100); do mkdir $S/l/d$d; for f in $(seq 1 200); do echo x > $S/l/d$d/f$f; done; done
run() { # $1 = uring mode, $2 = workload name, $3.. = command
  mode=$1; name=$2; shift 2
  rm -rf $S/u/* $S/w/*
  $B -f -o lowerdir=$S/l,upperdir=$S/u,workdir=$S/w,uring=$mode $S/m 2>/dev/null & pid=$!
  for i in $(seq 100); do grep -q " $S/m " /proc/self/mountinfo && break; sleep 0.05; done
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  a=$(date +%s%N)
  out=$(perf stat -a -e context-switches,cpu-migrations -x, -- "$@" 2>&1 >/dev/null)
  b=$(date +%s%N)
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  s=$(( (b-a)/1000000 ))
  cs=$(echo "$out" | grep context-switches | cut -d, -f1)
  echo "$name uring=$mode: daemon-cpu-ticks=$((t1-t0)) ctx-switches=$cs wall=${s}ms"
  umount $S/m; wait $pid
}
exec 9<>/tmp/unionfs-enable-uring.lock; flock 9; old=$(cat /sys/module/fuse/parameters/enable_uring); echo $old > /tmp/unionfs-enable-uring.lock; echo Y > /sys/module/fuse/parameters/enable_uring
trap 'echo $old > /sys/module/fuse/parameters/enable_uring; : > /tmp/unionfs-enable-uring.lock; rm -rf $S' EXIT
mkdir -p $S/l/big; for f in $(seq 1 10000); do : > $S/l/big/e$f; done
mkdir -p $S/src; for d in $(seq 1 50); do mkdir $S/src/d$d; for f in $(seq 1 100); do echo "int x$f;" > $S/src/d$d/f$f.c; done; done
tar -C $S -cf $S/src.tar src
for mode in off on off on; do
  run $mode readdir ls -f $S/m/big
  run $mode read-small sh -c "find $S/m/d1 $S/m/d2 $S/m/d3 $S/m/d4 $S/m/d5 -type f -exec cat {} + > /dev/null"
  run $mode rm-rf rm -rf $S/m/big
  run $mode untar tar -C $S/m -xf $S/src.tar
  run $mode tar sh -c "tar -C $S/m -cf - d1 d2 d3 d4 d5 d6 d7 d8 d9 d10 | cat > /dev/null"

  run $mode stat-walk find $S/m -ls
  run $mode lookup-neg python3 -c "
import os
for d in range(1,11):
    for i in range(2000):
        try: os.lstat('$S/m/d%d/nx%d' % (d, i))
        except OSError: pass"
  run $mode create python3 -c "
import os
os.mkdir('$S/m/new')
for i in range(5000):
    with open('$S/m/new/f%d' % i, 'w') as f: f.write('x')"
done
