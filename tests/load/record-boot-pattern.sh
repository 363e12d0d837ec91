#!/bin/sh
# Records the byte ranges QEMU reads while booting an ISO over NBD: nbdkit's file plugin with
# its log filter in front of the ISO, QEMU (BIOS, -cdrom over NBD) booting it until the guest
# prints MARKER, then the log's Read lines as offset,length (in the order QEMU asked).
#   tests/load/record-boot-pattern.sh demo.iso VMEDIA-BOOT-OK > tests/load/boot-pattern.txt
set -eu
iso=$1
marker=${2:-VMEDIA-BOOT-OK}
work=$(mktemp -d)
trap 'kill $nbdkit_pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nbdkit -f -r -i 127.0.0.1 -p "$port" --filter=log file "$iso" logfile="$work/nbd.log" &
nbdkit_pid=$!
sleep 1
# TCG: KVM inside this machine stops isolinux with an emulation failure.
accel=${ACCEL:-tcg}
timeout 300 qemu-system-x86_64 -accel "$accel" -m 512 -nographic -no-reboot \
    -drive "file=nbd://127.0.0.1:$port,format=raw,media=cdrom,readonly=on" \
    -boot d -serial stdio -monitor none -display none > "$work/serial.log" 2>&1 || true
grep -q "$marker" "$work/serial.log" || { echo "no $marker on the serial console" >&2; cat "$work/serial.log" >&2; exit 1; }
echo "# byte ranges QEMU ($accel, SeaBIOS, -cdrom over NBD) read booting $(basename "$iso") to $marker"
echo "# recorded by tests/load/record-boot-pattern.sh (nbdkit log filter); offset,length"
sed -n 's/.* Read id=[0-9]* offset=\(0x[0-9a-f]*\) count=\(0x[0-9a-f]*\) .*/\1 \2/p' "$work/nbd.log" |
    while read -r off len; do printf '%d,%d\n' "$off" "$len"; done
