//! `ovf export`: disks of any format -> one OVA. The disks are converted to streamOptimized
//! VMDKs (the ESXi profile of vmedia-disk) in a hidden temporary folder beside the output, then
//! the tar is written in the order DSP0243 requires: descriptor, disks, manifest, certificate.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vmedia_disk::convert::{convert, Concat, ConvertOptions};
use vmedia_disk::factory;
use vmedia_disk::image::{CreateOptions, DiskImage, Format, OpenOptions};
use vmedia_disk::profile::{self, Target};
use vmedia_io::{AtomicFile, Durability, OverwritePolicy, Progress, ReadAt};

use crate::descriptor::{self, ExportedDisk, SystemSpec};
use crate::error::{io_err, OvfError, Result};
use crate::manifest::{self, Algorithm};
use crate::tar;

/// Most disks exported: one SCSI controller holds 15 (unit 7 is the controller).
pub const MAX_EXPORT_DISKS: usize = 15;

/// Options of [`export`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub system: SystemSpec,
    pub overwrite: OverwritePolicy,
    pub durability: Durability,
    /// Sign the manifest: PEM private key (PKCS#8 or PKCS#1 RSA) and the PEM certificate.
    pub sign: Option<(PathBuf, PathBuf)>,
    /// How inputs are opened (format, references); the default probes.
    pub open: OpenOptions,
}

/// One member of the written OVA.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedMember {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub members: Vec<ExportedMember>,
    /// Capacity of each disk in bytes (in input order).
    pub capacities: Vec<u64>,
}

/// A file-name-safe form of the VM name for the member names.
fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "vm".into()
    } else {
        s
    }
}

/// Writes `out` (an OVA) from the disks `inputs`.
pub fn export(
    inputs: &[PathBuf],
    out: &Path,
    opts: &ExportOptions,
    progress: &dyn Progress,
) -> Result<ExportReport> {
    if inputs.is_empty() {
        return Err(OvfError::InvalidOption("no disk to export".into()));
    }
    if inputs.len() > MAX_EXPORT_DISKS {
        return Err(OvfError::Limit {
            what: "disks".into(),
            limit: "MAX_EXPORT_DISKS",
            value: inputs.len() as u64,
            max: MAX_EXPORT_DISKS as u64,
        });
    }
    if opts.system.cpus == 0 || opts.system.memory_mib == 0 {
        return Err(OvfError::InvalidOption(
            "--cpus and --memory must be at least 1".into(),
        ));
    }
    // Refuse early rather than after converting every disk.
    if opts.overwrite == OverwritePolicy::Refuse && out.exists() {
        return Err(OvfError::Io {
            path: out.to_path_buf(),
            action: "create",
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    let signer = match &opts.sign {
        Some((key, cert)) => Some(crate::sign::Signer::load(key, cert)?),
        None => None,
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".vmedia-ova-")
        .tempdir_in(&parent)
        .map_err(io_err(&parent, "create a temporary folder in"))?;
    let stem = file_stem(&opts.system.name);
    let mut disks = Vec::new();
    let mut files = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let image = factory::open(input, &opts.open)?;
        let href = format!("{stem}-disk{}.vmdk", i + 1);
        let vmdk = work.path().join(&href);
        progress.phase(&format!("converting {} to {href}", input.display()));
        let capacity = to_stream_vmdk(image, &vmdk, progress)?;
        let file_size = std::fs::metadata(&vmdk)
            .map_err(io_err(&vmdk, "read the size of"))?
            .len();
        disks.push(ExportedDisk {
            href: href.clone(),
            file_size,
            capacity,
        });
        files.push((href, vmdk));
    }
    let descriptor_name = format!("{stem}.ovf");
    let text = descriptor::emit(&opts.system, &disks);
    // What we write we must read back: a descriptor our parser refuses is a bug here.
    descriptor::parse(text.as_bytes(), &descriptor_name)?;

    progress.phase("writing the OVA");
    let mut atomic = AtomicFile::create(out, opts.overwrite).map_err(io_err(out, "create"))?;
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut members = Vec::new();
    let mut entries = Vec::new();
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, atomic.file_mut());
        let put = |name: &str, data: &[u8], w: &mut dyn Write| -> Result<String> {
            w.write_all(&tar::header(name, data.len() as u64, mtime)?)
                .and_then(|_| w.write_all(data))
                .and_then(|_| w.write_all(&[0u8; 512][..tar::padding(data.len() as u64)]))
                .map_err(io_err(out, "write"))?;
            let mut h = Algorithm::Sha256.hasher();
            h.update(data);
            Ok(h.hex())
        };
        let sha = put(&descriptor_name, text.as_bytes(), &mut w)?;
        members.push(ExportedMember {
            name: descriptor_name.clone(),
            size: text.len() as u64,
            sha256: sha.clone(),
        });
        entries.push(manifest::Entry {
            algorithm: Algorithm::Sha256,
            file: descriptor_name.clone(),
            digest: sha,
        });
        for (href, vmdk) in &files {
            let file = std::fs::File::open(vmdk).map_err(io_err(vmdk, "open"))?;
            let size = file.size().map_err(io_err(vmdk, "read the size of"))?;
            w.write_all(&tar::header(href, size, mtime)?)
                .map_err(io_err(out, "write"))?;
            let mut h = Algorithm::Sha256.hasher();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0u64;
            while at < size {
                let n = (size - at).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)
                    .map_err(io_err(vmdk, "read"))?;
                h.update(&buf[..n]);
                w.write_all(&buf[..n]).map_err(io_err(out, "write"))?;
                at += n as u64;
            }
            w.write_all(&[0u8; 512][..tar::padding(size)])
                .map_err(io_err(out, "write"))?;
            let sha = h.hex();
            members.push(ExportedMember {
                name: href.clone(),
                size,
                sha256: sha.clone(),
            });
            entries.push(manifest::Entry {
                algorithm: Algorithm::Sha256,
                file: href.clone(),
                digest: sha,
            });
        }
        let mf_name = format!("{stem}.mf");
        let mf = manifest::emit(&entries);
        let sha = put(&mf_name, mf.as_bytes(), &mut w)?;
        members.push(ExportedMember {
            name: mf_name.clone(),
            size: mf.len() as u64,
            sha256: sha,
        });
        if let Some(signer) = &signer {
            let cert_name = format!("{stem}.cert");
            let cert = signer.certificate_file(&mf_name, mf.as_bytes())?;
            let sha = put(&cert_name, cert.as_bytes(), &mut w)?;
            members.push(ExportedMember {
                name: cert_name,
                size: cert.len() as u64,
                sha256: sha,
            });
        }
        tar::finish(&mut w).map_err(io_err(out, "write"))?;
        w.flush().map_err(io_err(out, "write"))?;
    }
    atomic
        .commit_with(opts.durability)
        .map_err(io_err(out, "finish"))?;
    Ok(ExportReport {
        path: out.to_path_buf(),
        members,
        capacities: disks.iter().map(|d| d.capacity).collect(),
    })
}

/// Converts `image` into a streamOptimized VMDK at `path` (ESXi profile: lsilogic adapter,
/// size rounded as ESXi needs); returns its capacity in bytes.
fn to_stream_vmdk(image: Box<dyn DiskImage>, path: &Path, progress: &dyn Progress) -> Result<u64> {
    let images = [image];
    let mut source = Concat::new(&images)?;
    let mut create = CreateOptions::new(Format::Raw, source.size());
    profile::apply(Target::Esxi, &mut create)?;
    source.pad_to(create.virtual_size)?;
    create.overwrite = OverwritePolicy::Replace;
    create.flush = false;
    let writer = factory::create(path, &create)?;
    convert(&source, writer, &ConvertOptions::default(), progress)?;
    Ok(create.virtual_size)
}
