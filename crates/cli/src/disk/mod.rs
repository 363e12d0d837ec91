//! `vmedia disk ...`: qemu-img's subcommands with its options, output and exit codes, plus
//! `wrap-iso`. Each command lives in its own file; shared option parsing lives here.

mod check;
mod compare;
mod convert;
mod create;
mod info;
mod map;
mod measure;
mod modify;
mod secret;
mod wrap;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmedia_disk::image::{CreateOptions, DiskImage, Format, OpenOptions, ReferencePolicy};
use vmedia_disk::vmdk;

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Create a new disk image (qemu-img create)
    Create(create::Args),
    /// Show an image's format, sizes, backing file and format details (qemu-img info)
    Info(info::Args),
    /// Check an image's metadata for corruption and leaks (qemu-img check)
    Check(check::Args),
    /// Compare the guest contents of two images (qemu-img compare)
    Compare(compare::Args),
    /// Convert images between raw, qcow2, vmdk, vpc (VHD) and vhdx (qemu-img convert)
    Convert(convert::Args),
    /// Show which guest ranges are allocated, zero or in a backing file (qemu-img map)
    Map(map::Args),
    /// Compute the file size a new image needs (qemu-img measure)
    Measure(measure::Args),
    /// Write an overlay's data into its backing file (qemu-img commit)
    Commit(modify::CommitArgs),
    /// Change the backing file of an overlay (qemu-img rebase)
    Rebase(modify::RebaseArgs),
    /// Grow or shrink an image's virtual size (qemu-img resize)
    Resize(modify::ResizeArgs),
    /// Make a VMDK whose flat extent is an ISO file (nothing copied)
    WrapIso(wrap::Args),
}

pub fn run(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DiskCommand::Create(a) => create::run(a),
        DiskCommand::Info(a) => info::run(a),
        DiskCommand::Check(a) => check::run(a),
        DiskCommand::Compare(a) => compare::run(a),
        DiskCommand::Convert(a) => convert::run(a),
        DiskCommand::Map(a) => map::run(a),
        DiskCommand::Measure(a) => measure::run(a),
        DiskCommand::Commit(a) => modify::run_commit(a),
        DiskCommand::Rebase(a) => modify::run_rebase(a),
        DiskCommand::Resize(a) => modify::run_resize(a),
        DiskCommand::WrapIso(a) => wrap::run(a),
    }
}

/// Options every command that opens images shares.
#[derive(clap::Args, Clone, Debug)]
pub struct RefArgs {
    /// Which files named inside an image (backing files, extents, parents) may be opened:
    /// same-folder (default: only beside the image), any, none. Env: VMEDIA_ALLOW_REFERENCES
    #[arg(long = "allow-references", value_name = "POLICY")]
    pub allow_references: Option<String>,
    /// Accepted for qemu-img compatibility: vmedia takes no image locks, so sharing is always on
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Read images whose VHD footer/header checksums do not match (hand-edited samples);
    /// check lists the ignored mismatches. Env: VMEDIA_IGNORE_CHECKSUMS=1
    #[arg(long = "ignore-checksums")]
    pub ignore_checksums: bool,
    /// Passphrase of an encrypted (LUKS) qcow2 image, as qemu-img spells it:
    /// secret,id=ID,file=FILE or secret,id=ID,data=TEXT (repeatable; each is tried on each
    /// encrypted image; -o encrypt.key-secret=ID picks a new image's)
    #[arg(long = "object", value_name = "OBJECT")]
    pub objects: Vec<String>,
    /// Passphrase of an encrypted image read from FILE (its exact bytes, as qemu's file=)
    #[arg(long = "secret-file", value_name = "FILE")]
    pub secret_files: Vec<std::path::PathBuf>,
}

/// `--size` of the commands that read a bare seSparse extent.
#[derive(clap::Args, Clone, Debug)]
pub struct BareSizeArg {
    /// Virtual size of a bare ESXi seSparse extent opened with -f sesparse (it has no
    /// descriptor; default: the capacity its header records)
    #[arg(long = "size", value_name = "SIZE")]
    pub size: Option<String>,
}

impl BareSizeArg {
    /// Records the size for the images this command opens.
    pub fn apply(&self) -> anyhow::Result<()> {
        if let Some(size) = &self.size {
            let _ = BARE_SIZE.set(parse_size(size)?);
        }
        Ok(())
    }
}

/// `-f sesparse` was given: the image is read as a seSparse extent whatever its first bytes.
static NAMED_SESPARSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The --size of a bare seSparse extent, for the one command this process runs.
static BARE_SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

impl RefArgs {
    pub fn policy(&self) -> anyhow::Result<ReferencePolicy> {
        let from_env = crate::env::allow_references();
        match self.allow_references.as_deref().or(from_env.as_deref()) {
            None => Ok(ReferencePolicy::SameFolder),
            Some(name) => ReferencePolicy::from_name(name).with_context(|| {
                format!("--allow-references {name:?}: expected same-folder, any or none")
            }),
        }
    }

    pub fn open_options(&self, format: Option<Format>) -> anyhow::Result<OpenOptions> {
        let from_env = crate::env::ignore_checksums();
        Ok(OpenOptions {
            references: self.policy()?,
            format,
            ignore_checksums: self.ignore_checksums || from_env,
            secrets: self.secrets()?,
            ..OpenOptions::default()
        })
    }

    /// The secrets of --object and --secret-file.
    pub fn secrets(&self) -> anyhow::Result<Vec<vmedia_disk::image::Secret>> {
        secret::collect(&self.objects, &self.secret_files)
    }

    /// The passphrase of a new image made with `-o encrypt.format=luks` (None otherwise).
    pub fn create_secret(
        &self,
        options: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Option<vmedia_disk::image::Secret>> {
        secret::for_create(options, &self.secrets()?)
    }
}

/// Parses a -f/-O/-F format name. `sesparse` (a bare ESXi seSparse extent, no descriptor)
/// is a VMDK layer.
pub fn parse_format(name: Option<&str>) -> anyhow::Result<Option<Format>> {
    if name == Some("sesparse") {
        NAMED_SESPARSE.store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(Some(Format::Vmdk));
    }
    name.map(|n| Format::from_name(n).map_err(anyhow::Error::from))
        .transpose()
}

/// A bare seSparse extent named as VMDK (`-f sesparse` or `-f vmdk`): opened as a disk of
/// --size bytes or its header's capacity.
fn open_bare_sesparse(
    path: &Path,
    opts: &OpenOptions,
) -> Option<anyhow::Result<Box<dyn DiskImage>>> {
    if opts.format != Some(Format::Vmdk) {
        return None;
    }
    let mut head = [0u8; 16];
    let file = std::fs::File::open(path).ok()?;
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).ok()?;
    let named = NAMED_SESPARSE.load(std::sync::atomic::Ordering::Relaxed);
    if !named && u64::from_le_bytes(head[..8].try_into().ok()?) != vmdk::sesparse::CONST_MAGIC {
        return None;
    }
    let source: std::sync::Arc<dyn vmedia_io::ReadAt> = std::sync::Arc::new(file);
    Some(
        vmdk::VmdkImage::open_bare_sesparse(path, source, BARE_SIZE.get().copied())
            .map(|img| Box::new(img) as Box<dyn DiskImage>)
            .with_context(|| format!("Could not open '{}'", path.display())),
    )
}

/// Opens an image with the shared options.
pub fn open_image(path: &Path, opts: &OpenOptions) -> anyhow::Result<Box<dyn DiskImage>> {
    if let Some(opened) = open_bare_sesparse(path, opts) {
        return opened;
    }
    crate::library::open_disk(path, opts)
        .with_context(|| format!("Could not open '{}'", path.display()))
}

/// Opens an image whose data will be read: an encrypted qcow2 given no secret asks for its
/// passphrase on an interactive terminal.
pub fn open_data_image(path: &Path, opts: &OpenOptions) -> anyhow::Result<Box<dyn DiskImage>> {
    if opts.secrets.is_empty() && secret::is_encrypted_qcow2(path) {
        if let Some(s) = secret::prompt(&format!("Passphrase for {}: ", path.display()))? {
            let opts = OpenOptions {
                secrets: vec![s],
                ..opts.clone()
            };
            return open_image(path, &opts);
        }
    }
    open_image(path, opts)
}

/// Parses qemu-img -o "k=v,k2=v2" lists (several -o are merged; ",," escapes a comma).
pub fn parse_o_options(lists: &[String], into: &mut CreateOptions) -> anyhow::Result<()> {
    for list in lists {
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut chars = list.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    items.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        items.push(cur);
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                // qemu treats a bare key as key=on.
                into.options.insert(item, "on".into());
                continue;
            };
            into.options.insert(k.to_string(), v.to_string());
        }
    }
    Ok(())
}

/// Parses a qemu-img size with optional k/M/G/T suffix.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    match vmedia_disk::qcow2::writer::parse_size(text) {
        Some(v) => Ok(v),
        None => bail!("Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes: {text:?}"),
    }
}

/// qemu's human size: three significant digits and a binary unit ("1.5 GiB", "196 KiB").
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{value:.digits$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s} {}", UNITS[unit])
}

/// Prints JSON the way qemu-img does (4-space indent).
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    value.serialize(&mut ser)?;
    out.push(b'\n');
    use std::io::Write;
    std::io::stdout().write_all(&out)?;
    Ok(())
}

/// qemu-img's `--output human|json`, and `--json` as the spelling every other vmedia
/// reporting command uses.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct OutputArg {
    /// human or json
    #[arg(long = "output", value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Same as --output json
    #[arg(long, conflicts_with = "output")]
    json: bool,
}

impl OutputArg {
    /// The format asked for by either spelling.
    pub fn format(self) -> OutputFormat {
        if self.json {
            OutputFormat::Json
        } else {
            self.output
        }
    }
}

/// --output human|json.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_size_matches_qemu_style() {
        assert_eq!(human_size(67108864), "64 MiB");
        assert_eq!(human_size(200704), "196 KiB");
        assert_eq!(human_size(1610612736), "1.5 GiB");
        assert_eq!(human_size(512), "512 B");
    }

    #[test]
    fn o_options_split_and_escape() {
        let mut o = CreateOptions::new(Format::Qcow2, 0);
        parse_o_options(
            &[
                "cluster_size=4k,compat=0.10".into(),
                "backing_file=a,,b".into(),
            ],
            &mut o,
        )
        .unwrap();
        assert_eq!(o.options["cluster_size"], "4k");
        assert_eq!(o.options["compat"], "0.10");
        assert_eq!(o.options["backing_file"], "a,b");
    }
}
