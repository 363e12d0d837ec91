//! Boot test fixtures, built once per machine: a hybrid Linux ISO (isolinux for BIOS, GRUB EFI
//! in an ESP for UEFI, MBR and GPT so it also boots as a disk), the same as VMDK/VHD/VHDX/qcow2
//! disks (converted by qemu-img), a TFTP folder for pxelinux and GRUB netboot, an initramfs with
//! the block drivers loaded, and helpers to run `vmedia boot` and talk to a guest shell.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    cached_fixture, module_closure, newest_module_release, pack_initramfs, payload, require_tool,
    run_ok,
};

/// Kernel modules the test guest loads so it sees CD drives (AHCI) and virtio disks.
const GUEST_MODULES: [&str; 5] = ["virtio_pci", "ahci", "sr_mod", "virtio_blk", "isofs"];

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A Linux ISO whose boot entries (isolinux and GRUB) pass `vmedia.from=TAG` to the kernel,
/// bootable from a CD and from a disk, under BIOS and UEFI. GRUB finds its own file system by
/// a file only this image has (`/boot/vmedia-TAG`): with a second such image attached (a disk
/// booted while a CD is inserted), a search for a file every one has (`/boot/vmlinuz`) took
/// whichever GRUB listed first, and the disk's boot loader started the CD's kernel.
pub fn hybrid_iso(tag: &str) -> PathBuf {
    let dir = cached_fixture(&format!("boot-hybrid-v2-{tag}"), |dir| {
        let p = payload();
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("isolinux")).unwrap();
        fs::create_dir_all(tree.join("boot/grub")).unwrap();
        write(&tree.join(format!("boot/vmedia-{tag}")), tag);
        fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            tree.join("isolinux/isolinux.bin"),
        )
        .expect("isolinux not installed: run scripts/setup.sh");
        fs::copy(
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            tree.join("isolinux/ldlinux.c32"),
        )
        .expect("syslinux-common not installed: run scripts/setup.sh");
        fs::copy(&p.kernel, tree.join("boot/vmlinuz")).unwrap();
        fs::copy(&p.initrd, tree.join("boot/initrd.gz")).unwrap();
        write(
            &tree.join("isolinux/isolinux.cfg"),
            &format!(
                "serial 0 115200\ndefault linux\nprompt 0\ntimeout 0\nlabel linux\n kernel /boot/vmlinuz\n append initrd=/boot/initrd.gz console=ttyS0 no_timer_check vmedia.from={tag}\n"
            ),
        );
        write(
            &tree.join("boot/grub/grub.cfg"),
            &format!(
                "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nmenuentry 'vmedia' {{\n linux /boot/vmlinuz console=ttyS0 no_timer_check vmedia.from={tag}\n initrd /boot/initrd.gz\n}}\n"
            ),
        );
        let early = dir.join("early.cfg");
        write(
            &early,
            &format!("search --no-floppy --file /boot/vmedia-{tag} --set=root\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n"),
        );
        let efi = dir.join("BOOTX64.EFI");
        run_ok(
            Command::new(require_tool("grub-mkimage"))
                .args(["-O", "x86_64-efi", "-p", "/boot/grub", "-c"])
                .arg(&early)
                .arg("-o")
                .arg(&efi)
                .args([
                    "part_gpt",
                    "part_msdos",
                    "iso9660",
                    "fat",
                    "search",
                    "search_fs_file",
                ])
                .args([
                    "linux",
                    "normal",
                    "configfile",
                    "serial",
                    "terminal",
                    "echo",
                    "test",
                ]),
        );
        let esp = tree.join("efi.img");
        run_ok(
            Command::new(require_tool("mkfs.vfat"))
                .arg("-C")
                .arg(&esp)
                .arg("2880"),
        );
        run_ok(
            Command::new(require_tool("mmd"))
                .arg("-i")
                .arg(&esp)
                .args(["::/EFI", "::/EFI/BOOT"]),
        );
        run_ok(
            Command::new(require_tool("mcopy"))
                .arg("-i")
                .arg(&esp)
                .arg(&efi)
                .arg("::/EFI/BOOT/"),
        );
        run_ok(
            Command::new(require_tool("xorriso"))
                .args(["-as", "mkisofs", "-quiet", "-o"])
                .arg(dir.join("linux.iso"))
                .args(["-R", "-J", "-V", "VMEDIA_TEST"])
                .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
                .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
                .args(["-isohybrid-mbr", "/usr/lib/ISOLINUX/isohdpfx.bin"])
                .args([
                    "-eltorito-alt-boot",
                    "-e",
                    "efi.img",
                    "-no-emul-boot",
                    "-isohybrid-gpt-basdat",
                ])
                .arg(&tree),
        );
        fs::remove_dir_all(&tree).unwrap();
    });
    dir.join("linux.iso")
}

/// The token in the live ISO's `/live/token.txt`, which its guest prints after mounting the CD.
pub const LIVE_TOKEN: &str = "vmedia-live-medium-7f3a";

/// A live Linux ISO (xorriso, isolinux) for the direct fast path. Its initrd is three gzip
/// archives back to back: the payload, the block-driver overlay of `initrd_with_block_drivers()`
/// and an /init that loads the drivers, waits for /dev/sr0, mounts it and prints
/// `CDFILE <token.txt>` and `CDSIZE <n> sectors` after the marker, as a live system looking for
/// its medium would.
pub fn live_iso_finding_its_medium() -> PathBuf {
    let initrd = initrd_with_block_drivers();
    let dir = cached_fixture("boot-direct-live", |dir| {
        let p = payload();
        let overlay = dir.join("overlay");
        fs::create_dir_all(&overlay).unwrap();
        let init = "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev 2>/dev/null\nfor m in /mods/*.ko; do insmod $m; done\ni=0\nwhile [ ! -e /dev/sr0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\necho\necho VMEDIA-BOOT-OK\nmkdir -p /cdrom\nmount -t iso9660 -o ro /dev/sr0 /cdrom && echo \"CDFILE $(cat /cdrom/live/token.txt)\"\necho \"CDSIZE $(cat /sys/block/sr0/size) sectors\"\npoweroff -f\n";
        pack_initramfs(dir, "overlay", Some(init), "init.cpio.gz");
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("isolinux")).unwrap();
        fs::create_dir_all(tree.join("boot")).unwrap();
        fs::create_dir_all(tree.join("live")).unwrap();
        write(&tree.join("live/token.txt"), LIVE_TOKEN);
        fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            tree.join("isolinux/isolinux.bin"),
        )
        .expect("isolinux not installed: run scripts/setup.sh");
        fs::copy(
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            tree.join("isolinux/ldlinux.c32"),
        )
        .expect("syslinux-common not installed: run scripts/setup.sh");
        fs::copy(&p.kernel, tree.join("boot/vmlinuz")).unwrap();
        let mut joined = fs::read(&initrd).unwrap();
        joined.extend(fs::read(dir.join("init.cpio.gz")).unwrap());
        fs::write(tree.join("boot/initrd.gz"), joined).unwrap();
        write(
            &tree.join("isolinux/isolinux.cfg"),
            "default live\nprompt 0\ntimeout 0\nlabel live\n kernel /boot/vmlinuz\n append initrd=/boot/initrd.gz console=ttyS0 quiet vmedia.from=direct\n",
        );
        run_ok(
            Command::new(require_tool("xorriso"))
                .args(["-as", "mkisofs", "-quiet", "-o"])
                .arg(dir.join("live.iso"))
                .args(["-R", "-J", "-V", "VMEDIA_LIVE"])
                .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
                .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
                .arg(&tree),
        );
        fs::remove_dir_all(&tree).unwrap();
        fs::remove_dir_all(&overlay).unwrap();
    });
    dir.join("live.iso")
}

/// The hybrid ISO (tag `disk`) as a disk image in `format` (qemu-img's name: qcow2, vmdk,
/// vpc, vhdx).
pub fn bootable_disk(format: &str) -> PathBuf {
    let iso = hybrid_iso("disk");
    let name = format!("disk.{format}");
    let dir = cached_fixture(&format!("boot-disk-v2-{format}"), |dir| {
        run_ok(
            Command::new(require_tool("qemu-img"))
                .args(["convert", "-f", "raw", "-O", format])
                .arg(&iso)
                .arg(dir.join(&name)),
        );
    });
    dir.join(name)
}

/// A TFTP folder: pxelinux (BIOS) and a GRUB netboot image (UEFI), both booting the payload
/// with `vmedia.from=net`.
pub fn tftp_root() -> PathBuf {
    cached_fixture("boot-tftp", |dir| {
        let p = payload();
        fs::copy("/usr/lib/PXELINUX/pxelinux.0", dir.join("pxelinux.0"))
            .expect("pxelinux not installed: run scripts/setup.sh");
        fs::copy(
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            dir.join("ldlinux.c32"),
        )
        .unwrap();
        fs::copy(&p.kernel, dir.join("vmlinuz")).unwrap();
        fs::copy(&p.initrd, dir.join("initrd.gz")).unwrap();
        fs::create_dir_all(dir.join("pxelinux.cfg")).unwrap();
        write(
            &dir.join("pxelinux.cfg/default"),
            "serial 0 115200\ndefault linux\nprompt 0\ntimeout 0\nlabel linux\n kernel vmlinuz\n append initrd=initrd.gz console=ttyS0 no_timer_check vmedia.from=net\n",
        );
        fs::create_dir_all(dir.join("grub")).unwrap();
        write(
            &dir.join("grub/grub.cfg"),
            "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nmenuentry 'net' {\n linux (tftp)/vmlinuz console=ttyS0 no_timer_check vmedia.from=net\n initrd (tftp)/initrd.gz\n}\n",
        );
        run_ok(
            Command::new(require_tool("grub-mkimage"))
                .args(["-O", "x86_64-efi", "-p", "(tftp)/grub", "-o"])
                .arg(dir.join("grubnet.efi"))
                .args([
                    "tftp",
                    "efinet",
                    "net",
                    "normal",
                    "linux",
                    "configfile",
                    "serial",
                    "terminal",
                    "echo",
                    "test",
                ]),
        );
    })
}

/// The payload initramfs plus an overlay that loads the CD and disk drivers first (the Debian
/// kernel has them as modules), so the guest sees /sys/block/sr0 and /dev/vda.
pub fn initrd_with_block_drivers() -> PathBuf {
    let dir = cached_fixture("boot-modinitrd", |dir| {
        let p = payload();
        let release =
            newest_module_release().expect("no /lib/modules/<release>: install linux-image-amd64");
        let overlay = dir.join("overlay");
        fs::create_dir_all(overlay.join("mods")).unwrap();
        let ordered = module_closure(&release, &GUEST_MODULES);
        for (index, module) in ordered.iter().enumerate() {
            let name = Path::new(module)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            fs::copy(module, overlay.join(format!("mods/{index:02}-{name}"))).unwrap();
        }
        let init = "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev 2>/dev/null\nfor m in /mods/*.ko; do insmod $m; done\nsleep 1\necho\necho VMEDIA-BOOT-OK\nfor f in /sys/block/sr*/size /sys/block/vd*/size; do [ -e \"$f\" ] && echo \"BLOCKDEV $f $(cat $f)\"; done\nif grep -q vmedia.shell /proc/cmdline; then exec sh; fi\npoweroff -f\n";
        pack_initramfs(dir, "overlay", Some(init), "overlay.cpio.gz");
        // Linux unpacks concatenated archives in order; the overlay's /init replaces the payload's.
        let mut joined = fs::read(&p.initrd).unwrap();
        joined.extend(fs::read(dir.join("overlay.cpio.gz")).unwrap());
        fs::write(dir.join("initrd-modules.gz"), joined).unwrap();
        fs::remove_dir_all(&overlay).unwrap();
    });
    dir.join("initrd-modules.gz")
}

/// Lists running QEMU processes whose command line contains `needle`.
pub fn qemu_processes(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(needle)
        .output()
        .expect("pgrep (procps) missing");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("qemu-system"))
        .map(str::to_string)
        .collect()
}

/// A connection to a guest's busybox shell over the VM's serial socket.
pub struct GuestShell {
    stream: UnixStream,
    seen: Vec<u8>,
}

impl GuestShell {
    pub fn connect(socket: &Path) -> GuestShell {
        let stream = UnixStream::connect(socket).unwrap_or_else(|e| {
            panic!("cannot connect to serial socket {}: {e}", socket.display())
        });
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        GuestShell {
            stream,
            seen: Vec::new(),
        }
    }

    /// Runs `command` in the guest and returns what it printed between two unique tags.
    pub fn run(&mut self, command: &str, timeout: Duration) -> String {
        let tag = format!(
            "T{}",
            Instant::now().elapsed().as_nanos() ^ std::process::id() as u128
        );
        // The shell echoes the command line (wrapped at 80 columns): "$((1+1))" keeps the
        // echoed text from ever looking like the output tags.
        let line = format!("echo B-$((1+1))-{tag}; {command}; echo E-$((1+1))-{tag}\n");
        self.stream.write_all(line.as_bytes()).unwrap();
        let deadline = Instant::now() + timeout;
        let begin = format!("B-2-{tag}");
        let end = format!("E-2-{tag}");
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&self.seen).replace('\r', "");
            if let (Some(b), Some(e)) = (text.find(&begin), text.rfind(&end)) {
                if e > b {
                    let out = text[b + begin.len()..e].trim().to_string();
                    self.seen.clear();
                    return out;
                }
            }
            assert!(
                Instant::now() < deadline,
                "guest did not answer {command:?} within {timeout:?}; console so far:\n{text}"
            );
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the serial socket closed while running {command:?}"),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }
}
