//! "Where used": from a library item, the systems it is attached to, the clones based on it and
//! the netboot rules that name it, per version; from a system, what it uses. Read from the
//! attachment records, the clone store and the daemon's netboot files at request time, so the
//! answer is never stale.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::attachments::Attachment;
use super::systems::{boot_problem, SlotMedium};
use super::{blocking, ApiState, Problem};
use crate::http::ErrorBody;

/// Longest netboot file read for `library:` references.
const MAX_NETBOOT_FILE: u64 = 4 << 20;

/// What uses one version of an item.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct VersionUsage {
    pub version: u64,
    /// Systems it is attached to.
    pub systems: Vec<String>,
    /// Clones based on it.
    pub clones: Vec<String>,
    /// The netboot references that resolve to it (`library:NAME@V:/path`).
    pub netboot: Vec<String>,
}

/// `GET /api/v1/library/items/{name}/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemUsage {
    pub item: String,
    /// How many systems, clones and netboot references use any version.
    pub systems: usize,
    pub clones: usize,
    pub netboot: usize,
    /// Only versions something uses, oldest first.
    pub versions: Vec<VersionUsage>,
}

/// `GET /api/v1/systems/{id}/usage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemUsage {
    pub id: String,
    pub attachment: Option<Attachment>,
    pub media: Vec<SlotMedium>,
    pub disks: Vec<String>,
    /// Clones its media or disks read (their export name is in the medium's URL).
    pub clones: Vec<String>,
}

/// Every `library:NAME[@V][:/path]` reference in the daemon's netboot files.
pub fn netboot_references(files: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for file in files {
        let Ok(handle) = std::fs::File::open(file) else {
            continue;
        };
        let mut text = String::new();
        use std::io::Read;
        if handle
            .take(MAX_NETBOOT_FILE)
            .read_to_string(&mut text)
            .is_err()
        {
            continue;
        }
        for (at, _) in text.match_indices("library:") {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ']' | '}'))
                .unwrap_or(rest.len());
            let reference = &rest[..end];
            if reference.len() > "library:".len() {
                out.push(reference.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The item and version selector (`None`: the current one) a `library:` reference names.
pub fn reference_target(reference: &str) -> Option<(&str, Option<&str>)> {
    let spec = reference.strip_prefix("library:")?;
    let spec = spec.split(":/").next()?;
    Some(match spec.split_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (spec, None),
    })
}

/// Where an item is used, per version (hidden items are 404: the access middleware answers).
#[utoipa::path(get, path = "/api/v1/library/items/{name}/usage", tag = "library",
    params(("name" = String, Path)),
    responses((status = 200, body = ItemUsage),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn item_usage(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    vmedia_library::VersionSpec::current(&name)?;
    let usage = blocking(move || {
        let history = state.library().history(&name)?;
        let mut versions: BTreeMap<u64, VersionUsage> = BTreeMap::new();
        fn entry(versions: &mut BTreeMap<u64, VersionUsage>, v: u64) -> &mut VersionUsage {
            versions.entry(v).or_insert_with(|| VersionUsage {
                version: v,
                ..Default::default()
            })
        }
        let mut systems = 0;
        for attachment in state.attachments.list() {
            if attachment.item == name {
                entry(&mut versions, attachment.version)
                    .systems
                    .push(attachment.system);
                systems += 1;
            }
        }
        let mut clones = 0;
        if let Some(store) = &state.clones {
            let prefix = format!("{name}@");
            for clone in store.list() {
                let Some(rest) = clone.base.strip_prefix(&prefix) else {
                    continue;
                };
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(version) = digits.parse::<u64>() {
                    entry(&mut versions, version).clones.push(clone.name);
                    clones += 1;
                }
            }
        }
        let mut netboot = 0;
        for reference in netboot_references(&state.netboot_files) {
            let Some((item, selector)) = reference_target(&reference) else {
                continue;
            };
            if item != name {
                continue;
            }
            let version = match selector {
                None | Some("current") => history.current,
                Some(text) => match text.parse::<u64>() {
                    Ok(v) => Some(v),
                    // A digest: the version whose digest starts with it.
                    Err(_) => history
                        .versions
                        .iter()
                        .find(|v| v.digest.starts_with(text))
                        .map(|v| v.version),
                },
            };
            if let Some(version) = version {
                entry(&mut versions, version).netboot.push(reference);
                netboot += 1;
            }
        }
        Ok(ItemUsage {
            item: name,
            systems,
            clones,
            netboot,
            versions: versions.into_values().collect(),
        })
    })
    .await?;
    Ok(Json(usage).into_response())
}

/// What a system uses: its attachment, media, disks and the clones they read.
#[utoipa::path(get, path = "/api/v1/systems/{id}/usage", tag = "systems",
    params(("id" = String, Path)),
    responses((status = 200, body = SystemUsage),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_usage(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    vmedia_boot::spec::validate_name(&id).map_err(boot_problem)?;
    let store = state.vm_store()?;
    let usage = blocking(move || {
        let config = store.load(&id).map_err(boot_problem)?;
        let media: Vec<SlotMedium> = config
            .spec
            .cdroms
            .iter()
            .enumerate()
            .map(|(slot, s)| SlotMedium {
                slot,
                image: s.medium.as_ref().map(|m| m.to_string()),
            })
            .collect();
        let disks: Vec<String> = config
            .spec
            .disks
            .iter()
            .map(|d| d.medium.to_string())
            .collect();
        let mut clones = Vec::new();
        if let Some(store) = &state.clones {
            for clone in store.list() {
                let used = media
                    .iter()
                    .filter_map(|m| m.image.as_deref())
                    .chain(disks.iter().map(String::as_str))
                    .any(|image| image.rsplit('/').next() == Some(clone.name.as_str()));
                if used {
                    clones.push(clone.name);
                }
            }
        }
        Ok(SystemUsage {
            attachment: state.attachments.get(&id),
            id,
            media,
            disks,
            clones,
        })
    })
    .await?;
    Ok(Json(usage).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netboot_references_are_found_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.toml");
        std::fs::write(
            &file,
            "kernel = \"library:debian@3:/install.amd/vmlinuz\"\ninitrd = ['library:debian:/initrd.gz', \"library:other@sha256:ab\"]\n",
        )
        .unwrap();
        let refs = netboot_references(&[file, dir.path().join("missing")]);
        assert_eq!(refs.len(), 3, "{refs:?}");
        assert_eq!(
            reference_target("library:debian@3:/install.amd/vmlinuz"),
            Some(("debian", Some("3")))
        );
        assert_eq!(
            reference_target("library:debian:/initrd.gz"),
            Some(("debian", None))
        );
    }
}
