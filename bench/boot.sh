#!/usr/bin/env bash
# Boot benchmark (TCG): the same Linux ISO booted through SeaBIOS + isolinux (what
# `vmedia boot --cdrom` does without --direct) and through vmedia's direct-kernel fast path
# (time to the console marker; also the fast path without its lean machine, and with the
# compressed kernel), and vmedia's overhead over launching QEMU by hand with the fast path's
# command line.
#
# usage: bench/boot.sh [TARGET_BINARY] [RUNS]
#   TARGET_BINARY  the vmedia binary (default target/release/vmedia)
#   RUNS           boots per variant; the median is reported (default 3)
# Needs: qemu-system-x86_64, xorriso, isolinux, syslinux-common, busybox-static, cpio, gzip,
# python3, a Debian kernel in /boot (scripts/setup.sh installs them).
set -euo pipefail

VMEDIA=$(realpath "${1:-target/release/vmedia}")
RUNS=${2:-3}
MARKER=VMEDIA-BOOT-OK
WORK=$(mktemp -d /tmp/vmedia-bench-boot.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export VMEDIA_HOME="$WORK/home"

[ -x "$VMEDIA" ] || { echo "bench/boot.sh: $VMEDIA is not executable (cargo build --release -p vmedia)"; exit 1; }
for tool in qemu-system-x86_64 xorriso cpio gzip python3 busybox; do
  command -v "$tool" >/dev/null || { echo "bench/boot.sh: $tool missing (bash scripts/setup.sh)"; exit 1; }
done

# --- the Linux ISO: Debian kernel + busybox initramfs printing the marker, isolinux for BIOS.
KERNEL=$(ls /boot/vmlinuz-* | sort | tail -1)
mkdir -p "$WORK/initramfs/bin" "$WORK/initramfs/proc" "$WORK/initramfs/sys" "$WORK/tree/isolinux" "$WORK/tree/boot"
cp "$(command -v busybox)" "$WORK/initramfs/bin/busybox"
cat > "$WORK/initramfs/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo $MARKER
poweroff -f
INIT
chmod 755 "$WORK/initramfs/init"
(cd "$WORK/initramfs" && find . | cpio -o -H newc --quiet | gzip -1 > "$WORK/tree/boot/initrd.gz")
cp "$KERNEL" "$WORK/tree/boot/vmlinuz"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$WORK/tree/isolinux/"
cat > "$WORK/tree/isolinux/isolinux.cfg" <<CFG
serial 0 115200
default linux
prompt 0
timeout 0
label linux
  kernel /boot/vmlinuz
  append initrd=/boot/initrd.gz console=ttyS0 quiet
CFG
xorriso -as mkisofs -quiet -o "$WORK/linux.iso" -R -J -V BENCH \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
  "$WORK/tree" 2>/dev/null
ISO="$WORK/linux.iso"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Marker time (from VM start, measured by vmedia) of one `vmedia boot` run.
marker_time() {
  "$VMEDIA" boot --accel tcg --timeout 300 --expect "$MARKER" --json "$@" \
    | json_field 'd["timeline"]["marker"]'
}

echo "vmedia boot benchmark: $(basename "$KERNEL"), TCG, median of $RUNS runs"
echo "binary: $VMEDIA"

# Warm-up: file caches, and the fast path's one-time kernel decompression (timed on its own).
start=$(now); "$VMEDIA" boot --accel tcg --timeout 300 --expect "$MARKER" --cdrom "$ISO" --direct >/dev/null 2>&1
first_direct=$(python3 -c "print(f'{$(now) - $start:.2f}')")

seabios=(); direct=(); nolean=(); bzimage=()
for _ in $(seq "$RUNS"); do
  seabios+=("$(marker_time --cdrom "$ISO")")
  direct+=("$(marker_time --cdrom "$ISO" --direct)")
  nolean+=("$(marker_time --cdrom "$ISO" --direct --no-lean)")
  bzimage+=("$(marker_time --cdrom "$ISO" --direct --no-lean --bzimage)")
done
t_seabios=$(printf '%s\n' "${seabios[@]}" | median)
t_direct=$(printf '%s\n' "${direct[@]}" | median)
t_nolean=$(printf '%s\n' "${nolean[@]}" | median)
t_bzimage=$(printf '%s\n' "${bzimage[@]}" | median)

# Overhead: the fast path as users run it (`vmedia boot --cdrom ISO --direct`, whole command:
# reading the ISO's config, the cached kernel and initrd, QEMU, stopping it) against QEMU
# started by hand with the identical command line (the argv vmedia reports), timed to the
# marker on its stdout.
"$VMEDIA" boot --accel tcg --timeout 300 --expect "$MARKER" --json --cdrom "$ISO" --direct \
  > "$WORK/direct.json"
mapfile -t QEMU_CMD < <(python3 - "$WORK/direct.json" "$WORK/qmp.sock" <<'PY'
import json, os, re, sys
cmd = json.load(open(sys.argv[1]))["qemu_command"]
for flag in ("-kernel", "-initrd"):
    path = cmd[cmd.index(flag) + 1]
    # Both come from vmedia's cache (state folder), so they outlive the run.
    if not os.path.exists(path):
        sys.exit(f"bench/boot.sh: {flag} {path} is gone after the run; cannot replay it")
for arg in cmd:
    # The QMP socket lived in vmedia's scratch folder; give the hand-run its own.
    print(re.sub(r"path=[^,]*qmp\.sock", "path=" + sys.argv[2], arg))
PY
)
by_hand=(); wrapped=()
for _ in $(seq "$RUNS"); do
  rm -f "$WORK/qmp.sock"
  start=$(now)
  # `exec` makes $! QEMU itself, so it can be stopped like vmedia stops it.
  exec 3< <(exec "${QEMU_CMD[@]}" </dev/null 2>/dev/null)
  qemu_pid=$!
  grep -a -m1 -q "$MARKER" <&3
  by_hand+=("$(python3 -c "print(f'{$(now) - $start:.3f}')")")
  kill "$qemu_pid" 2>/dev/null || true
  exec 3<&-
  while kill -0 "$qemu_pid" 2>/dev/null; do sleep 0.05; done
  start=$(now)
  "$VMEDIA" boot --accel tcg --timeout 300 --expect "$MARKER" --cdrom "$ISO" --direct >/dev/null 2>&1
  wrapped+=("$(python3 -c "print(f'{$(now) - $start:.3f}')")")
done
echo "runs (s): seabios ${seabios[*]} | direct ${direct[*]} | no-lean ${nolean[*]} | bzimage ${bzimage[*]} | by hand ${by_hand[*]} | vmedia ${wrapped[*]}" >&2
t_hand=$(printf '%s\n' "${by_hand[@]}" | median)
t_wrapped=$(printf '%s\n' "${wrapped[@]}" | median)

python3 - "$t_seabios" "$t_direct" "$t_nolean" "$t_bzimage" "$t_hand" "$t_wrapped" "$first_direct" <<'PY'
import sys
seabios, direct, nolean, bzimage, hand, wrapped, first = map(float, sys.argv[1:])
print(f"SeaBIOS + isolinux, time to marker:              {seabios:7.2f} s")
print(f"vmedia --direct (lean machine), to marker:       {direct:7.2f} s   {seabios / direct:5.2f}x sooner (target >= 3x)")
print(f"vmedia --direct --no-lean (SeaBIOS, PVH vmlinux): {nolean:6.2f} s   {seabios / nolean:5.2f}x sooner")
print(f"vmedia --direct --no-lean --bzimage, to marker:  {bzimage:7.2f} s   {seabios / bzimage:5.2f}x sooner")
print(f"  (first --direct run incl. one-time kernel and initrd decompression: {first:.2f} s wall)")
print(f"QEMU by hand (the --direct command line), start to marker: {hand:7.2f} s")
print(f"vmedia boot --direct, whole command (start to exit):       {wrapped:7.2f} s   overhead {100 * (wrapped / hand - 1):+.1f}% (target <= 5%)")
PY
