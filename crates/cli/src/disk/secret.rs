//! Passphrases of encrypted (LUKS) qcow2 images: qemu's `--object secret,id=ID,file=F|data=D`,
//! `--secret-file F`, and a prompt without echo when the terminal is interactive.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use vmedia_disk::image::Secret;

/// Parses one `--object` value: `secret,id=ID,file=FILE` or `secret,id=ID,data=TEXT`
/// (qemu also writes `format=raw`, the only format accepted here). The file's bytes are the
/// passphrase exactly, newline included, as qemu reads them.
pub fn parse_object(spec: &str) -> anyhow::Result<Secret> {
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default();
    let kind = kind.strip_prefix("qom-type=").unwrap_or(kind);
    if kind != "secret" {
        bail!("--object {spec:?}: only secret objects are supported (secret,id=ID,file=F or data=TEXT)");
    }
    let (mut id, mut file, mut data) = (None, None, None);
    for part in parts {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("file", v)) => file = Some(PathBuf::from(v)),
            Some(("data", v)) => data = Some(v.as_bytes().to_vec()),
            Some(("format", "raw")) => {}
            _ => bail!(
                "--object {spec:?}: unknown parameter {part:?} (known: id, file, data, format=raw)"
            ),
        }
    }
    let Some(id) = id else {
        bail!("--object {spec:?}: Parameter 'id' is missing");
    };
    let bytes = match (file, data) {
        (Some(f), None) => std::fs::read(&f)
            .with_context(|| format!("secret {id}: cannot read {}", f.display()))?,
        (None, Some(d)) => d,
        _ => bail!("secret {id}: give exactly one of file= and data="),
    };
    Ok(Secret::new(id, &bytes))
}

/// Every secret given on the command line, objects first.
pub fn collect(objects: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<Secret>> {
    let mut out = Vec::new();
    for spec in objects {
        out.push(parse_object(spec)?);
    }
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f)
            .with_context(|| format!("--secret-file: cannot read {}", f.display()))?;
        out.push(Secret::new(format!("secret-file{i}"), &bytes));
    }
    Ok(out)
}

/// Reads a passphrase from the terminal without echoing it; None when stdin is not a terminal.
pub fn prompt(label: &str) -> anyhow::Result<Option<Secret>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(None);
    }
    eprint!("{label}");
    std::io::stderr().flush().ok();
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let saved = tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = &saved {
        let _ = tcsetattr(&stdin, OptionalActions::Now, saved);
    }
    eprintln!();
    read.context("reading the passphrase")?;
    let pass = line.trim_end_matches(['\n', '\r']);
    Ok(Some(Secret::new("prompt", pass.as_bytes())))
}

/// Whether `path` is a LUKS-encrypted qcow2 file (crypt_method 2): then a prompt is worth it.
pub fn is_encrypted_qcow2(path: &Path) -> bool {
    let mut head = [0u8; 36];
    let ok = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    ok.is_ok() && head[..4] == vmedia_disk::qcow2::MAGIC && head[32..36] == [0, 0, 0, 2]
}

/// The passphrase of a new encrypted image: the secret `-o encrypt.key-secret` names, else
/// the only one given, else a prompt asked twice. None when the image is not encrypted.
pub fn for_create(
    options: &std::collections::BTreeMap<String, String>,
    secrets: &[Secret],
) -> anyhow::Result<Option<Secret>> {
    if options.get("encrypt.format").is_none() {
        return Ok(None);
    }
    if let Some(id) = options.get("encrypt.key-secret") {
        return match secrets.iter().find(|s| &s.id == id) {
            Some(s) => Ok(Some(s.clone())),
            None => bail!(
                "No secret with id '{id}' found (give it with --object secret,id={id},file=FILE)"
            ),
        };
    }
    match secrets {
        [one] => return Ok(Some(one.clone())),
        [] => {}
        _ => bail!("several secrets given: name the new image's with -o encrypt.key-secret=ID"),
    }
    let Some(first) = prompt("Passphrase for the new encrypted image: ")? else {
        bail!("an encrypted image needs a passphrase: -o encrypt.key-secret=ID with --object secret,id=ID,file=FILE, or --secret-file FILE");
    };
    let Some(again) = prompt("The same passphrase again: ")? else {
        bail!("no passphrase confirmation");
    };
    if first.bytes() != again.bytes() {
        bail!("the passphrases differ");
    }
    if first.bytes().is_empty() {
        bail!("an empty passphrase is refused");
    }
    Ok(Some(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_objects_parse_as_qemu_spells_them() {
        let s = parse_object("secret,id=sec0,data=abc").unwrap();
        assert_eq!((s.id.as_str(), s.bytes()), ("sec0", &b"abc"[..]));
        assert!(parse_object("secret,data=abc").is_err());
        assert!(parse_object("iothread,id=x").is_err());
        assert!(parse_object("secret,id=a,data=x,file=y").is_err());
    }
}
