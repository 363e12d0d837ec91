#!/usr/bin/env bash
# ISO benchmark: vmedia against genisoimage, xorriso (+ implantisomd5) and 7z on the same trees,
# in one run. Prints each time and the ratio peer/vmedia (above 1 means vmedia is faster).
#
# usage: bench/iso.sh TARGET_BINARY          (e.g. target/release/vmedia)
# env:   BENCH_DIR   scratch folder (default: a new temp dir, removed at exit)
#        BENCH_RUNS  runs per measurement, the best one counts (default 2)
#        BENCH_BIG_MIB size of the big file in MiB (default 2048)
#
# Targets (from the ISO brief): small-file create >= 1.5x genisoimage; big file no slower than
# either peer; MD5+SHA-256 create >= 3x xorriso --md5 + implantisomd5; extract >= 1.5x 7z.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 TARGET_BINARY (an executable vmedia)" >&2
  exit 2
fi
VMEDIA=$(realpath "$1")
RUNS=${BENCH_RUNS:-2}
BIG_MIB=${BENCH_BIG_MIB:-2048}
for tool in genisoimage xorriso implantisomd5 7z; do
  command -v "$tool" >/dev/null || { echo "bench: $tool missing; run scripts/setup.sh" >&2; exit 1; }
done

if [ -n "${BENCH_DIR:-}" ]; then
  WORK=$BENCH_DIR
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/vmedia-bench-iso.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi

# --- trees -------------------------------------------------------------------------------
# small: 200 dirs x 100 files of 4 KiB (random data, so nothing compresses or dedups).
if [ ! -f "$WORK/small.done" ]; then
  rm -rf "$WORK/small"
  mkdir -p "$WORK/small"
  for d in $(seq -w 1 200); do
    mkdir "$WORK/small/dir$d"
    head -c $((100 * 4096)) /dev/urandom | split -b 4096 -d -a 3 - "$WORK/small/dir$d/file"
  done
  touch "$WORK/small.done"
fi
# big: one file of BIG_MIB MiB.
if [ ! -f "$WORK/big.done" ]; then
  rm -rf "$WORK/big"
  mkdir -p "$WORK/big"
  head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$WORK/big/big.bin"
  touch "$WORK/big.done"
fi

# Keep the inputs in the page cache so every tool starts warm.
cat "$WORK"/small/*/* "$WORK/big/big.bin" > /dev/null

# best_time NAME CMD...: runs CMD RUNS times, prints the best wall time in seconds.
best_time() {
  local best="" t0 t1 dt i
  for i in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/out" && mkdir -p "$WORK/out"
    t0=$(date +%s.%N)
    if ! "$@" > "$WORK/last.log" 2>&1; then
      echo "bench: command failed: $*" >&2
      tail -20 "$WORK/last.log" >&2
      exit 1
    fi
    t1=$(date +%s.%N)
    dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    if [ -z "$best" ] || awk -v a="$dt" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$dt; fi
  done
  echo "$best"
}

ratio() { awk -v peer="$1" -v ours="$2" 'BEGIN { if (ours <= 0) ours = 0.001; printf "%.2f", peer / ours }'; }

RESULTS=()
report() { # report LABEL VMEDIA_TIME PEER_NAME PEER_TIME TARGET
  local r
  r=$(ratio "$4" "$2")
  local verdict
  verdict=$(awk -v r="$r" -v t="$5" 'BEGIN { print (r >= t) ? "ok" : "MISSED" }')
  printf '%-34s vmedia %8.3fs  %-28s %8.3fs  ratio %6sx (target >= %s: %s)\n' \
    "$1" "$2" "$3" "$4" "$r" "$5" "$verdict"
  RESULTS+=("$1|$3|$r|$5|$verdict")
}

xorriso_md5() { # xorriso --md5 plus checkisomd5's implanted MD5, the peer way to get both
  xorriso -as mkisofs -quiet --md5 -R -J -o "$1" "$2" && implantisomd5 "$1"
}

vmedia_extract() { "$VMEDIA" iso extract -q "$1" "$2"; }

for tree in small big; do
  src="$WORK/$tree"
  iso="$WORK/out/$tree.iso"
  echo "== $tree tree"
  t_vm=$(best_time "$VMEDIA" mkisofs -quiet --no-checksums -R -J -o "$iso" "$src")
  t_gen=$(best_time genisoimage -quiet -R -J -o "$iso" "$src")
  t_xo=$(best_time xorriso -as mkisofs -quiet -R -J -o "$iso" "$src")
  if [ "$tree" = small ]; then target_gen=1.5; else target_gen=1.0; fi
  report "create -R -J ($tree)" "$t_vm" "genisoimage" "$t_gen" "$target_gen"
  report "create -R -J ($tree)" "$t_vm" "xorriso -as mkisofs" "$t_xo" 1.0

  t_vm_sum=$(best_time "$VMEDIA" mkisofs -quiet -R -J -o "$iso" "$src")
  t_xo_sum=$(best_time xorriso_md5 "$iso" "$src")
  report "create + MD5/SHA-256 ($tree)" "$t_vm_sum" "xorriso --md5 + implantisomd5" "$t_xo_sum" 3.0

  # Extract from one image made by vmedia, so both extractors read the same bytes.
  mkdir -p "$WORK/img"
  "$VMEDIA" mkisofs -quiet --no-checksums -R -J -o "$WORK/img/$tree.iso" "$src"
  t_vm_x=$(best_time vmedia_extract "$WORK/img/$tree.iso" "$WORK/out/x")
  t_7z_x=$(best_time 7z x -y -bd -o"$WORK/out/x" "$WORK/img/$tree.iso")
  report "extract ($tree)" "$t_vm_x" "7z x" "$t_7z_x" 1.5
  rm -rf "$WORK/img" "$WORK/out"
done

echo
echo "summary (ratio = peer time / vmedia time):"
missed=0
for line in "${RESULTS[@]}"; do
  IFS='|' read -r label peer r target verdict <<< "$line"
  printf '  %-34s vs %-30s %6sx  %s\n' "$label" "$peer" "$r" "$verdict"
  [ "$verdict" = ok ] || missed=$((missed + 1))
done
echo "targets missed: $missed"
