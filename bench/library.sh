#!/usr/bin/env bash
# Library benchmark: `vmedia library` against restic (content-defined chunks, SHA-256, zstd) and
# borgbackup on the same input, in one run. Prints each time, the stored bytes, and the ratio
# peer/vmedia (above 1 means vmedia is faster or smaller).
#
# usage: bench/library.sh TARGET_BINARY          (e.g. target/release/vmedia)
# env:   BENCH_DIR      scratch folder (default: a new temp dir, removed at exit)
#        BENCH_RUNS     runs per measurement, the best one counts (default 1: each run of the
#                       first add re-creates every repository, which is most of the time; each
#                       run of the second add starts from copies of the repositories after v1)
#        BENCH_DATA_MIB MiB of real file content in the image (default 1600)
#        BENCH_HOLE_MIB MiB of zeros (a sparse file in the tree) in the image (default 448)
#        BENCH_NO_BORG  set to 1 to skip borg (single-threaded, the slowest of the three)
#
# Input: an ISO made by `vmedia iso create` from files of the machine's own packages (/usr/lib,
# /usr/share) plus a sparse file (holes), ~2 GiB; then its repack with one 1 MiB file added.
# Targets (issue 10): first add >= 1.5x faster than `restic backup` with stored bytes <= restic's;
# second add >= 2x faster than restic's second backup with new bytes <= restic's; get >= 2x
# faster than `restic restore`; verify at least as fast as `restic check --read-data`.
#
# Same conditions for every tool:
# - Inputs are read once before timing (warm page cache), `sync` before each timed run.
# - vmedia's library is unencrypted by default and restic always encrypts, so both the plain
#   and the encrypted (init --encrypt) vmedia library are measured, each against the targets.
# - Repositories are folders on the same file system; restic uses repository format 2 with
#   `--compression auto` (zstd), borg `-e none --compression zstd,3`.
# - Each tool's second backup reads the repacked image under the same path as the first.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_binary "$0" "$@"
RUNS=${BENCH_RUNS:-1}
DATA_MIB=${BENCH_DATA_MIB:-1600}
HOLE_MIB=${BENCH_HOLE_MIB:-448}
NO_BORG=${BENCH_NO_BORG:-0}
bench_require restic borg
bench_workdir library
export RESTIC_PASSWORD=vmedia-bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
unset VMEDIA_LIBRARY VMEDIA_LIBRARY_KEY

# --- input -------------------------------------------------------------------------------
bench_iso_versions BENCH_LIBRARY
head -c 32 /dev/urandom > "$WORK/library.key"

# --- timing ------------------------------------------------------------------------------
# time_cmd CMD...: sync (not timed), run CMD once, print its wall time in seconds.
time_cmd() {
  local t0 t1
  sync
  t0=$(date +%s.%N)
  if ! "$@" > "$WORK/last.log" 2>&1; then
    echo "bench: command failed: $*" >&2
    tail -20 "$WORK/last.log" >&2
    exit 1
  fi
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
best() { # best CURRENT NEW -> the smaller
  awk -v x="$1" -v y="$2" 'BEGIN { if (x == "" || y < x) print y; else print x }'
}
bytes_of() { du -sb "$1" | cut -f1; }
ratio() { awk -v peer="$1" -v ours="$2" 'BEGIN { if (ours <= 0) ours = 0.001; printf "%.2f", peer / ours }'; }

RESULTS=()
report() { # report LABEL VMEDIA_VALUE PEER_NAME PEER_VALUE TARGET UNIT
  local r verdict
  r=$(ratio "$4" "$2")
  verdict=$(awk -v r="$r" -v t="$5" 'BEGIN { print (t == "-") ? "info" : ((r >= t) ? "ok" : "MISSED") }')
  printf '%-30s vmedia %14s%s  %-22s %14s%s  ratio %6sx (target >= %s: %s)\n' \
    "$1" "$2" "$6" "$3" "$4" "$6" "$r" "$5" "$verdict"
  RESULTS+=("$1|$3|$r|$5|$verdict")
}

# --- the tools ---------------------------------------------------------------------------
VLIB="$WORK/vmedia-lib"
VLIB_ENC="$WORK/vmedia-lib-enc"
RREPO="$WORK/restic-repo"
BREPO="$WORK/borg-repo"
vm_init() { "$VMEDIA" --library "$VLIB" library init; }
vm_init_enc() { "$VMEDIA" --library "$VLIB_ENC" library init --encrypt "$WORK/library.key"; }
vm_add() { "$VMEDIA" --library "$VLIB" library add image "$IMAGE" --json > "$WORK/vm-add.json"; }
vm_add_enc() { "$VMEDIA" --library "$VLIB_ENC" library --key "$WORK/library.key" add image "$IMAGE"; }
vm_get() { "$VMEDIA" --library "$VLIB" library get image -o "$WORK/restore/vmedia.iso" --force; }
vm_get_enc() { "$VMEDIA" --library "$VLIB_ENC" library --key "$WORK/library.key" get image -o "$WORK/restore/vmedia-enc.iso" --force; }
vm_verify() { "$VMEDIA" --library "$VLIB" library verify; }
vm_verify_enc() { "$VMEDIA" --library "$VLIB_ENC" library --key "$WORK/library.key" verify; }
restic_init() { restic -r "$RREPO" init --repository-version 2; }
restic_backup() { (cd "$IMAGE_DIR" && restic -r "$RREPO" backup --compression auto image.iso); }
restic_restore() { rm -rf "$WORK/restore/restic"; restic -r "$RREPO" restore latest --target "$WORK/restore/restic"; }
restic_check() { restic -r "$RREPO" check --read-data; }
borg_init() { borg init -e none "$BREPO"; }
borg_backup() { (cd "$IMAGE_DIR" && borg create --compression zstd,3 "$BREPO::$1" image.iso); }
borg_restore() { rm -rf "$WORK/restore/borg"; mkdir -p "$WORK/restore/borg"; (cd "$WORK/restore/borg" && borg extract "$BREPO::v2"); }
borg_check() { borg check --verify-data "$BREPO"; }

fresh() { rm -rf "$VLIB" "$VLIB_ENC" "$RREPO" "$BREPO"; }

# --- first add ---------------------------------------------------------------------------
echo "== first add (v1, $SIZE1 bytes)"
declare -A T
for run in $(seq 1 "$RUNS"); do
  fresh
  vm_init >/dev/null; vm_init_enc >/dev/null; restic_init >/dev/null
  [ "$NO_BORG" = 1 ] || borg_init >/dev/null
  use_version v1
  T[add1_vm]=$(best "${T[add1_vm]:-}" "$(time_cmd vm_add)")
  T[add1_vm_enc]=$(best "${T[add1_vm_enc]:-}" "$(time_cmd vm_add_enc)")
  T[add1_restic]=$(best "${T[add1_restic]:-}" "$(time_cmd restic_backup)")
  [ "$NO_BORG" = 1 ] || T[add1_borg]=$(best "${T[add1_borg]:-}" "$(time_cmd borg_backup v1)")
done
S1_VM=$(bytes_of "$VLIB"); S1_VM_ENC=$(bytes_of "$VLIB_ENC"); S1_RESTIC=$(bytes_of "$RREPO")
report "first add: time (plain)" "${T[add1_vm]}" "restic backup" "${T[add1_restic]}" 1.5 s
report "first add: time (encrypted)" "${T[add1_vm_enc]}" "restic backup" "${T[add1_restic]}" 1.5 s
report "first add: stored (plain)" "$S1_VM" "restic repo" "$S1_RESTIC" 1.0 B
report "first add: stored (encrypted)" "$S1_VM_ENC" "restic repo" "$S1_RESTIC" 1.0 B
if [ "$NO_BORG" != 1 ]; then
  S1_BORG=$(bytes_of "$BREPO")
  report "first add: time (encrypted)" "${T[add1_vm_enc]}" "borg create" "${T[add1_borg]}" - s
  report "first add: stored (plain)" "$S1_VM" "borg repo" "$S1_BORG" - B
fi

# --- second add (the repack) ----------------------------------------------------------------
echo "== second add (v2 = v1 + one 1 MiB file)"
use_version v2
# Each run starts from the repositories as the first add left them (copied aside once).
SNAP="$WORK/after-v1"
if [ "$RUNS" -gt 1 ]; then
  rm -rf "$SNAP"; mkdir -p "$SNAP"
  cp -a "$VLIB" "$VLIB_ENC" "$RREPO" "$SNAP/"
fi
for run in $(seq 1 "$RUNS"); do
  if [ "$run" -gt 1 ]; then
    rm -rf "$VLIB" "$VLIB_ENC" "$RREPO"
    cp -a "$SNAP/$(basename "$VLIB")" "$SNAP/$(basename "$VLIB_ENC")" "$SNAP/$(basename "$RREPO")" "$WORK/"
  fi
  T[add2_vm]=$(best "${T[add2_vm]:-}" "$(time_cmd vm_add)")
  NEW_VM_REPORTED=$(sed -n 's/.*"new_bytes": *\([0-9]*\).*/\1/p' "$WORK/vm-add.json" | head -1)
  T[add2_vm_enc]=$(best "${T[add2_vm_enc]:-}" "$(time_cmd vm_add_enc)")
  T[add2_restic]=$(best "${T[add2_restic]:-}" "$(time_cmd restic_backup)")
done
rm -rf "$SNAP"
N2_VM=$(( $(bytes_of "$VLIB") - S1_VM ))
N2_VM_ENC=$(( $(bytes_of "$VLIB_ENC") - S1_VM_ENC ))
N2_RESTIC=$(( $(bytes_of "$RREPO") - S1_RESTIC ))
report "second add: time (plain)" "${T[add2_vm]}" "restic backup" "${T[add2_restic]}" 2.0 s
report "second add: time (encrypted)" "${T[add2_vm_enc]}" "restic backup" "${T[add2_restic]}" 2.0 s
report "second add: new bytes (plain)" "$N2_VM" "restic repo growth" "$N2_RESTIC" 1.0 B
report "second add: new bytes (enc.)" "$N2_VM_ENC" "restic repo growth" "$N2_RESTIC" 1.0 B
echo "  (vmedia's own report of new image bytes: ${NEW_VM_REPORTED:-?})"
if [ "$NO_BORG" != 1 ]; then
  T[add2_borg]=$(time_cmd borg_backup v2)
  N2_BORG=$(( $(bytes_of "$BREPO") - S1_BORG ))
  report "second add: time (encrypted)" "${T[add2_vm_enc]}" "borg create" "${T[add2_borg]}" - s
  report "second add: new bytes (plain)" "$N2_VM" "borg repo growth" "$N2_BORG" - B
fi

# --- get / restore --------------------------------------------------------------------------
echo "== get v2 vs restore"
mkdir -p "$WORK/restore"
for run in $(seq 1 "$RUNS"); do
  T[get_vm]=$(best "${T[get_vm]:-}" "$(time_cmd vm_get)")
  T[get_vm_enc]=$(best "${T[get_vm_enc]:-}" "$(time_cmd vm_get_enc)")
  T[get_restic]=$(best "${T[get_restic]:-}" "$(time_cmd restic_restore)")
  [ "$NO_BORG" = 1 ] || T[get_borg]=$(best "${T[get_borg]:-}" "$(time_cmd borg_restore)")
done
for out in "$WORK/restore/vmedia.iso" "$WORK/restore/vmedia-enc.iso" "$WORK/restore/restic/image.iso"; do
  cmp -s "$out" "$WORK/input/v2.iso" || { echo "bench: $out differs from v2.iso" >&2; exit 1; }
done
report "get (plain)" "${T[get_vm]}" "restic restore" "${T[get_restic]}" 2.0 s
report "get (encrypted)" "${T[get_vm_enc]}" "restic restore" "${T[get_restic]}" 2.0 s
[ "$NO_BORG" = 1 ] || report "get (encrypted)" "${T[get_vm_enc]}" "borg extract" "${T[get_borg]}" - s
rm -rf "$WORK/restore"

# --- verify / check --read-data ----------------------------------------------------------------
echo "== verify vs check --read-data (both versions in each repository)"
for run in $(seq 1 "$RUNS"); do
  T[verify_vm]=$(best "${T[verify_vm]:-}" "$(time_cmd vm_verify)")
  T[verify_vm_enc]=$(best "${T[verify_vm_enc]:-}" "$(time_cmd vm_verify_enc)")
  T[check_restic]=$(best "${T[check_restic]:-}" "$(time_cmd restic_check)")
  [ "$NO_BORG" = 1 ] || T[check_borg]=$(best "${T[check_borg]:-}" "$(time_cmd borg_check)")
done
report "verify (plain)" "${T[verify_vm]}" "restic check --read-data" "${T[check_restic]}" 1.0 s
report "verify (encrypted)" "${T[verify_vm_enc]}" "restic check --read-data" "${T[check_restic]}" 1.0 s
[ "$NO_BORG" = 1 ] || report "verify (encrypted)" "${T[verify_vm_enc]}" "borg check --verify-data" "${T[check_borg]}" - s

echo
echo "summary (ratio = peer / vmedia; above 1 = vmedia faster or smaller):"
missed=0
for line in "${RESULTS[@]}"; do
  IFS='|' read -r label peer r target verdict <<< "$line"
  printf '  %-30s vs %-24s %8sx  %s\n' "$label" "$peer" "$r" "$verdict"
  [ "$verdict" != MISSED ] || missed=$((missed + 1))
done
echo "targets missed: $missed"
