#!/usr/bin/env bash
# Builds the demo payload in DIR: a Debian kernel (vmlinuz) and a busybox initramfs (initrd.gz)
# whose /init prints VMEDIA-BOOT-OK on the console and powers off.
set -euo pipefail
dir=${1:?usage: payload.sh DIR}
mkdir -p "$dir"
kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)
cp "$kernel" "$dir/vmlinuz"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,mnt}
cp /bin/busybox "$root/bin/busybox"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
echo
echo VMEDIA-BOOT-OK
poweroff -f
INIT
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$dir/initrd.gz"
