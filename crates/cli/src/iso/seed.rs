//! `vmedia iso seed`: a cloud-init NoCloud seed image, as `cloud-localds` makes it: volume
//! `cidata`, Joliet + Rock Ridge, files `user-data`, `meta-data`, `network-config`,
//! `vendor-data` in the root.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmedia_iso::spec::{GraftPoint, IntegritySpec, IsoSpec, MemFile, RockRidgeMode};

use super::output::OutputArgs;
use crate::mkisofs::common;

/// The volume label cloud-init's NoCloud datasource looks for.
const SEED_VOLUME_ID: &str = "cidata";
/// Largest seed file accepted; cloud-init's datasources are small text, a multi-megabyte
/// user-data is a mistake (and the image would still be made in memory otherwise).
const MAX_SEED_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia iso seed --user-data user-data.yaml --meta-data meta-data.yaml -o seed.iso
  vmedia iso seed --user-data cloud.cfg --hostname vm1 -o seed.iso --force
  qemu-system-x86_64 ... -drive file=seed.iso,media=cdrom

Without --meta-data, meta-data is `instance-id: iid-local01` (plus local-hostname with
--hostname), as cloud-localds writes it. Exit codes: 0 written, 1 failure, 2 usage error.")]
pub struct Args {
    /// cloud-init user-data (#cloud-config YAML, a script, a MIME multipart...).
    #[arg(long, value_name = "FILE")]
    user_data: PathBuf,
    /// NoCloud meta-data (instance-id, local-hostname...).
    #[arg(long, value_name = "FILE")]
    meta_data: Option<PathBuf>,
    /// Network configuration (version 1 or 2).
    #[arg(long, value_name = "FILE")]
    network_config: Option<PathBuf>,
    /// Vendor data.
    #[arg(long, value_name = "FILE")]
    vendor_data: Option<PathBuf>,
    /// local-hostname for the generated meta-data (cloud-localds -H).
    #[arg(long, conflicts_with = "meta_data")]
    hostname: Option<String>,
    /// instance-id for the generated meta-data.
    #[arg(long, conflicts_with = "meta_data", default_value = "iid-local01")]
    instance_id: String,
    /// Also embed MD5 (checkisomd5) and SHA-256 checksums (cloud-localds does not).
    #[arg(long)]
    integrity: bool,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (out, policy) = args.out.prepare()?;
    let spec = build_spec(&args)?;
    args.out.write(spec, &out, policy)
}

fn checked_seed_file(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(path).with_context(|| format!("--{what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("--{what} {}: not a regular file", path.display());
    }
    if meta.len() > MAX_SEED_FILE_BYTES {
        bail!(
            "--{what} {}: {} bytes is over the {MAX_SEED_FILE_BYTES}-byte limit for seed files",
            path.display(),
            meta.len()
        );
    }
    Ok(path.to_path_buf())
}

fn build_spec(args: &Args) -> anyhow::Result<IsoSpec> {
    let mut spec = IsoSpec::default();
    spec.volume.volume_id = Some(SEED_VOLUME_ID.to_string());
    spec.naming.joliet = true;
    spec.naming.rock_ridge = Some(RockRidgeMode::Faithful);
    spec.date = common::source_date_epoch()?;
    let mut files = vec![(
        "user-data",
        checked_seed_file(&args.user_data, "user-data")?,
    )];
    for (name, path) in [
        ("meta-data", &args.meta_data),
        ("network-config", &args.network_config),
        ("vendor-data", &args.vendor_data),
    ] {
        if let Some(path) = path {
            files.push((name, checked_seed_file(path, name)?));
        }
    }
    for (name, host_path) in files {
        spec.sources.push(GraftPoint {
            iso_path: format!("/{name}"),
            host_path,
        });
    }
    if args.meta_data.is_none() {
        spec.mem_files.push(MemFile {
            iso_path: "/meta-data".into(),
            data: generated_meta_data(&args.instance_id, args.hostname.as_deref()).into_bytes(),
            mode: 0o644,
            mtime: None,
        });
    }
    spec.integrity = IntegritySpec {
        md5: args.integrity,
        sha256: args.integrity,
        signing_key: None,
    };
    Ok(spec)
}

/// What cloud-localds writes when no meta-data file is given.
fn generated_meta_data(instance_id: &str, hostname: Option<&str>) -> String {
    let mut text = format!("instance-id: {instance_id}\n");
    if let Some(host) = hostname {
        text.push_str(&format!("local-hostname: {host}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_meta_data_has_instance_id_and_hostname() {
        assert_eq!(
            generated_meta_data("iid-local01", None),
            "instance-id: iid-local01\n"
        );
        assert_eq!(
            generated_meta_data("i-1", Some("vm1")),
            "instance-id: i-1\nlocal-hostname: vm1\n"
        );
    }

    #[test]
    fn seed_file_must_be_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(checked_seed_file(dir.path(), "user-data").is_err());
        assert!(checked_seed_file(&dir.path().join("missing"), "user-data").is_err());
    }
}
