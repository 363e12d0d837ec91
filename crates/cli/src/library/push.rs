//! `vmedia library push NAME[@V] oci://...` and the `oci://` source of `library add`: flag
//! parsing and printing around `vmedia_oci` (the registry client and the containerDisk
//! format live there; the library crate knows nothing of HTTP).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vmedia_library::{AddSource, ImageKind, VersionSpec};
use vmedia_oci::{Credentials, PullReport, Reference, RegistryOptions};

use super::JsonArg;
use crate::progress::Bar;

/// How to reach a registry; shared by `push` and `add oci://...`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OciArgs {
    /// Talk to the registry over plain http:// (a registry on loopback or a lab network)
    #[arg(long = "plain-http", help_heading = "Registry options (oci://)")]
    pub plain_http: bool,
    /// Accept any TLS certificate from the registry
    #[arg(long, help_heading = "Registry options (oci://)")]
    pub insecure: bool,
    /// User name for the registry (Basic auth, or for its token service)
    #[arg(
        long,
        value_name = "USER",
        requires = "password_file",
        help_heading = "Registry options (oci://)"
    )]
    pub username: Option<String>,
    /// File holding the registry password or access token (first line)
    #[arg(
        long = "password-file",
        value_name = "FILE",
        requires = "username",
        help_heading = "Registry options (oci://)"
    )]
    pub password_file: Option<PathBuf>,
}

impl OciArgs {
    fn options(&self) -> Result<RegistryOptions> {
        let credentials = match (&self.username, &self.password_file) {
            (Some(username), Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read password file {}", path.display()))?;
                let password = text.lines().next().unwrap_or("").to_string();
                if password.is_empty() {
                    bail!("password file {} is empty", path.display());
                }
                Some(Credentials {
                    username: username.clone(),
                    password,
                })
            }
            _ => None,
        };
        Ok(RegistryOptions {
            plain_http: self.plain_http,
            insecure: self.insecure,
            credentials,
        })
    }
}

/// True when SOURCE names a registry image.
pub fn is_oci(source: &str) -> bool {
    source
        .get(..vmedia_oci::reference::SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(vmedia_oci::reference::SCHEME))
}

/// The disk of a registry image as an add source (streamed), its size and what was pulled.
pub fn pull_source(source: &str, oci: &OciArgs) -> Result<(AddSource, Option<u64>, PullReport)> {
    let reference = Reference::parse(source)?;
    let disk = vmedia_oci::pull(&reference, &oci.options()?)
        .with_context(|| format!("cannot pull {}", reference.display()))?;
    let report = disk.report.clone();
    Ok((
        AddSource::Reader(Box::new(disk)),
        Some(report.disk_size),
        report,
    ))
}

/// Prints what `add oci://...` pulled (text) before the add report.
pub fn print_pulled(report: &PullReport) {
    println!(
        "Pulled {} ({}, manifest {}): {} from layer {} ({})",
        report.reference,
        report.platform.as_deref().unwrap_or("single-platform"),
        super::short_digest(&report.manifest_digest),
        report.disk_path,
        super::short_digest(&report.layer_digest),
        match report.compression {
            vmedia_oci::manifest::Compression::None => "tar",
            vmedia_oci::manifest::Compression::Gzip => "tar+gzip",
            vmedia_oci::manifest::Compression::Zstd => "tar+zstd",
        }
    );
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia library push fedora oci://registry.example:5000/vm/fedora:41\n  vmedia library push web-disk@3 oci://127.0.0.1:5000/web:3 --plain-http\n  vmedia library push debian oci://ghcr.io/acme/debian:12 --username acme --password-file token.txt\n\nThe version becomes a KubeVirt containerDisk: an OCI image whose one uncompressed tar layer holds\nthe disk as disk/disk.qcow2 (or disk.img, disk.iso), owned 107:107. The layer is hashed from the\nlibrary first; a layer the repository already holds is not sent again. The manifest records the\nversion as annotations io.vmedia.image.name and io.vmedia.image.digest.\n\nPull it back with: vmedia library add NAME oci://REGISTRY/REPO:TAG"
)]
pub struct PushArgs {
    /// NAME, NAME@N or NAME@sha256:PREFIX
    spec: String,
    /// oci://REGISTRY/REPOSITORY:TAG
    destination: String,
    #[command(flatten)]
    oci: OciArgs,
    #[command(flatten)]
    json: JsonArg,
}

/// The file name under disk/ for a version's kind; KubeVirt runs raw and qcow2 disks.
fn disk_file_name(kind: &ImageKind) -> Result<&'static str> {
    Ok(match kind {
        ImageKind::Disk { format, .. } if format == "qcow2" => "disk.qcow2",
        ImageKind::Disk { format, .. } if format == "raw" => "disk.img",
        ImageKind::Raw { .. } => "disk.img",
        ImageKind::Iso { .. } => "disk.iso",
        ImageKind::Disk { format, .. } => bail!(
            "a {format} disk: KubeVirt runs raw and qcow2 containerDisks (convert it first: vmedia disk convert -O qcow2)"
        ),
        ImageKind::Ovf { .. } => {
            bail!("an OVA package is not a disk KubeVirt can run (import its disk first)")
        }
    })
}

pub fn run_push(a: PushArgs) -> Result<ExitCode> {
    let reference = Reference::parse(&a.destination)?;
    let library = super::open_library()?;
    let shown = library.show(&VersionSpec::parse(&a.spec)?)?;
    // The exact version shown, even if the item's current version changes meanwhile.
    let exact = VersionSpec::parse(&format!("{}@{}", shown.name, shown.version))?;
    let reader = library.open_version(&exact)?;
    let file_name = disk_file_name(&shown.kind)?;
    let source = vmedia_oci::PushSource {
        disk: &reader,
        size: reader.size(),
        digest: shown.digest.clone(),
        file_name: file_name.to_string(),
        annotations: BTreeMap::from([(
            vmedia_oci::push::ANNOTATION_NAME.to_string(),
            format!("{}@{}", shown.name, shown.version),
        )]),
    };
    let bar = Bar::bytes(a.json.json);
    let report = vmedia_oci::push(&reference, &a.oci.options()?, &source, &bar);
    bar.finish();
    let report = report.with_context(|| {
        format!(
            "cannot push {}@{} to {}",
            shown.name,
            shown.version,
            reference.display()
        )
    })?;
    if a.json.json {
        crate::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Pushed {}@{} to {}",
        shown.name, shown.version, report.reference
    );
    println!("  manifest {}", report.manifest_digest);
    println!(
        "  layer {} ({}, {}), {}",
        report.layer_digest,
        report.disk_path,
        super::bytes_text(report.layer_size),
        if report.layer_uploaded {
            format!("{} sent", super::bytes_text(report.uploaded_bytes))
        } else {
            "already in the repository: not sent".to_string()
        }
    );
    println!("  disk {}", report.disk_digest);
    Ok(ExitCode::SUCCESS)
}
