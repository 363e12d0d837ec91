#!/usr/bin/env bash
# The main job end to end (make demo): build a bootable ISO (BIOS via isolinux, UEFI via GRUB in
# an ESP that vmedia builds, USB-hybrid), verify it, list it, boot it (BIOS, UEFI, fast path),
# tour the virtual-disk commands, then network-boot a VM from `vmedia netboot serve` inside a
# private network namespace, keep the images in a vmedia library (versions, history, reads
# in place), and serve the library with `vmedia serve`: a VM over NBD, two per-VM clones.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VMEDIA=$(realpath "${1:-target/release/vmedia}")
OUT=${DEMO_OUT:-demo-out}
rm -rf "$OUT"; mkdir -p "$OUT"; OUT=$(realpath "$OUT")
cd "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Payload: Debian kernel + busybox initramfs that prints VMEDIA-BOOT-OK"
bash "$HERE/payload.sh" payload
ls -l payload

step "ISO tree: isolinux for BIOS, GRUB EFI for UEFI"
mkdir -p tree/isolinux tree/live esp/EFI/BOOT
cp payload/vmlinuz payload/initrd.gz tree/live/
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 tree/isolinux/
cat > tree/isolinux/isolinux.cfg <<'CFG'
SERIAL 0 115200
DEFAULT live
TIMEOUT 1
LABEL live
  KERNEL /live/vmlinuz
  APPEND initrd=/live/initrd.gz console=ttyS0
CFG
mkdir -p tree/boot/grub
cat > tree/boot/grub/grub.cfg <<'CFG'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
set default=0
menuentry "live" {
  linux /live/vmlinuz console=ttyS0
  initrd /live/initrd.gz
}
CFG
cat > embedded.cfg <<'CFG'
search --no-floppy --set=root --file /live/vmlinuz
set prefix=($root)/boot/grub
configfile /boot/grub/grub.cfg
CFG
grub-mkstandalone -O x86_64-efi -o esp/EFI/BOOT/BOOTX64.EFI \
  --modules="part_gpt part_msdos iso9660 fat search search_fs_file configfile linux normal serial terminal" \
  --locales= --fonts= --themes= "boot/grub/grub.cfg=embedded.cfg"

step "Build: vmedia iso create (reproducible, hybrid, BIOS + UEFI, MD5 + SHA-256 embedded)"
run "$VMEDIA" iso create tree -o live.iso --volume-id VMEDIA_DEMO \
  --bios-boot isolinux/isolinux.bin --boot-catalog isolinux/boot.cat \
  --efi-dir esp --hybrid --date 2026-01-01
run "$VMEDIA" iso verify live.iso
run checkisomd5 live.iso | tail -1

step "Inspect"
run "$VMEDIA" iso info live.iso
run "$VMEDIA" iso ls live.iso -l -R

step "Boot the ISO: BIOS (SeaBIOS + isolinux)"
run "$VMEDIA" boot --cdrom live.iso --firmware bios --accel tcg --expect VMEDIA-BOOT-OK --timeout 180
step "Boot the ISO: UEFI (OVMF + GRUB from the ESP vmedia built)"
run "$VMEDIA" boot --cdrom live.iso --firmware uefi --accel tcg --expect VMEDIA-BOOT-OK --timeout 240
step "Boot the ISO: fast path (kernel, initrd and command line read from isolinux.cfg)"
run "$VMEDIA" boot --cdrom live.iso --direct --accel tcg --expect VMEDIA-BOOT-OK --timeout 120
step "Boot the same image as a USB stick (raw hard disk), UEFI"
run "$VMEDIA" boot --disk live.iso,format=raw --firmware uefi --accel tcg --expect VMEDIA-BOOT-OK --timeout 240

step "Virtual disks: the hybrid ISO is also a bootable disk; convert it to every format"
run "$VMEDIA" disk info live.iso
for spec in "qcow2:" "qcow2-zstd:-c -o compression_type=zstd" "vmdk:-o subformat=streamOptimized" "vpc:" "vhdx:"; do
  name=${spec%%:*}; opts=${spec#*:}; fmt=${name%%-*}
  # shellcheck disable=SC2086
  run "$VMEDIA" disk convert -f raw -O "$fmt" $opts live.iso "disk-$name.img"
  run "$VMEDIA" disk check "disk-$name.img" || true
  run qemu-img compare -f raw live.iso "disk-$name.img"
  run "$VMEDIA" disk compare live.iso "disk-$name.img"
done
run "$VMEDIA" disk info --output json disk-vmdk.img
run "$VMEDIA" disk map disk-qcow2.img
step "Boot the streamOptimized VMDK (BIOS) and the VHDX (UEFI)"
run "$VMEDIA" boot --disk disk-vmdk.img --firmware bios --accel tcg --expect VMEDIA-BOOT-OK --timeout 180
run "$VMEDIA" boot --disk disk-vhdx.img --firmware uefi --accel tcg --expect VMEDIA-BOOT-OK --timeout 240
step "Wrap the ISO as a VMDK without copying it"
run "$VMEDIA" disk wrap-iso live.iso -o live-wrapped.vmdk
run qemu-img info live-wrapped.vmdk
run "$VMEDIA" disk compare live.iso live-wrapped.vmdk

step "Network boot: vmedia netboot serve (full DHCP) on a private bridge in a network namespace"
NS=vmedia-demo-$$
BR=vmdemo0
cleanup() { [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null; ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p netroot/pxelinux.cfg
cp /usr/lib/PXELINUX/pxelinux.0 /usr/lib/syslinux/modules/bios/ldlinux.c32 netroot/
cp live.iso netroot/
cat > netroot/pxelinux.cfg/default <<'CFG'
SERIAL 0 115200
DEFAULT live
LABEL live
  KERNEL live.iso/live/vmlinuz
  APPEND initrd=live.iso/live/initrd.gz console=ttyS0
CFG
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add "$BR" type bridge
ip -n "$NS" addr add 10.77.0.1/24 dev "$BR"
ip -n "$NS" link set "$BR" up
# qemu-bridge-helper only attaches taps to bridges listed here.
mkdir -p /etc/qemu
grep -qsx "allow $BR" /etc/qemu/bridge.conf || echo "allow $BR" >> /etc/qemu/bridge.conf
echo "(the kernel and initrd are served straight out of live.iso; nothing is unpacked)"
ip netns exec "$NS" "$VMEDIA" netboot serve --interface "$BR" --dhcp-range 10.77.0.100-10.77.0.150 \
  --root netroot --bios-bootfile pxelinux.0 --http-port 8080 --lease-file netroot.leases.json \
  2> netboot-server.log &
SERVER_PID=$!
sleep 1
run ip netns exec "$NS" "$VMEDIA" boot --net bridge=$BR --boot net --firmware bios --accel tcg \
  --expect VMEDIA-BOOT-OK --timeout 300
step "What the server saw, machine by machine"
run ip netns exec "$NS" "$VMEDIA" netboot status --server http://10.77.0.1:8080
echo "--- server log"; cat netboot-server.log

step "Image library: two versions of the ISO, a zstd qcow2, history, reads in place, get back checked"
export VMEDIA_LIBRARY="$OUT/library"
run "$VMEDIA" library init
run "$VMEDIA" library add live live.iso --note 'first build' --label os=busybox
echo "(the same bytes again: a new version whose chunks are all reused)"
run "$VMEDIA" library add live live.iso --note 'rebuilt, same bytes'
run "$VMEDIA" library add live-disk disk-qcow2-zstd.img
run "$VMEDIA" library history live
run "$VMEDIA" iso cat library:live@1 /isolinux/isolinux.cfg
run "$VMEDIA" disk info library:live-disk
run "$VMEDIA" library rollback live --to 1 --note 'back to the first build'
run "$VMEDIA" library get live -o live-from-library.iso
run cmp live.iso live-from-library.iso
run "$VMEDIA" library verify
run "$VMEDIA" library ls

step "Serve the library: vmedia serve (HTTP + NBD), a VM booted over NBD, two clones booted, vmedia top"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); NBD_PORT=$(free_port)
"$VMEDIA" serve --listen 127.0.0.1 --http-port "$HTTP_PORT" --nbd-port "$NBD_PORT" \
  --state "$OUT/serve-state" 2> serve.log &
SERVE_PID=$!
serve_cleanup() { kill "$SERVE_PID" 2>/dev/null || true; cleanup; }
trap serve_cleanup EXIT
for _ in $(seq 100); do grep -q "listening for nbd" serve.log && break; sleep 0.1; done
cat serve.log
export VMEDIA_SERVER="http://127.0.0.1:$HTTP_PORT"
run nbdinfo --list "nbd://127.0.0.1:$NBD_PORT"
run curl -sI "$VMEDIA_SERVER/images/live"
run "$VMEDIA" boot --cdrom "nbd://127.0.0.1:$NBD_PORT/live" --firmware bios --accel tcg \
  --expect VMEDIA-BOOT-OK --timeout 180
run "$VMEDIA" clone create live vm1
run "$VMEDIA" clone create live vm2
for vm in vm1 vm2; do
  run "$VMEDIA" boot --disk-rw "nbd://127.0.0.1:$NBD_PORT/clone/$vm" --firmware uefi --accel tcg \
    --expect VMEDIA-BOOT-OK --timeout 240
done
run "$VMEDIA" clone ls
run "$VMEDIA" top --batch --iterations 1 --interval 1s
run "$VMEDIA" clone rm vm2
kill -TERM "$SERVE_PID"; wait "$SERVE_PID"
echo "--- daemon log"; cat serve.log

step "Done: everything above ran from $(basename "$VMEDIA") in $OUT"

step "The web console: vmedia serve with HTTPS, an administrator, the console left running"
CONSOLE_PORT=${VMEDIA_CONSOLE_PORT:-8443}
CONSOLE_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
printf '%s\n' "$CONSOLE_PASSWORD" > console-admin.pw
chmod 600 console-admin.pw
run "$VMEDIA" user add admin --role administrator --password-file console-admin.pw \
  --state "$OUT/serve-state"
# Detached (setsid), so it outlives this script; its log is console-serve.log.
setsid "$VMEDIA" serve --listen 127.0.0.1 --http-port "$(free_port)" --nbd-port 0 \
  --https-port "$CONSOLE_PORT" --state "$OUT/serve-state" 2> console-serve.log < /dev/null &
CONSOLE_PID=$!
for _ in $(seq 100); do grep -q "listening for https" console-serve.log && break; sleep 0.1; done
grep -E "listening for https|SHA-256" console-serve.log || { cat console-serve.log; exit 1; }
run curl -sk -o /dev/null -w '%{http_code} %{content_type}\n' "https://127.0.0.1:$CONSOLE_PORT/"
echo
echo "The console is running: https://127.0.0.1:$CONSOLE_PORT/"
echo "  log in as admin, password $CONSOLE_PASSWORD (also in $OUT/console-admin.pw)"
echo "  the certificate is self-signed: compare its SHA-256 above with what the browser shows"
echo "  stop it with: kill $CONSOLE_PID"
