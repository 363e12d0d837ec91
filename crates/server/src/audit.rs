//! The audit log: every change through any interface (REST, Redfish, the `vmedia user`
//! commands), and every refused attempt, as one JSON line in `STATE/audit.jsonl`: who, what,
//! on what, when, from where, and how it ended.
//!
//! Each record is one `write` of a whole line on a file opened with `O_APPEND`, so concurrent
//! writers (the daemon and an offline `vmedia user add`) never interleave inside a line, and a
//! SIGKILL loses at most the line being written (a torn last line is skipped when read).
//! Secrets are never passed here: callers name the target, never a password or token.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::auth::Principal;

/// The file name inside the state folder.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The tail of the log a query reads at most: recent history without reading gigabytes.
pub const MAX_QUERY_BYTES: u64 = 64 << 20;
/// Longest field recorded (a hostile target name cannot bloat the log).
const MAX_FIELD: usize = 512;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused: not signed in, or the role may not.
    Denied,
    /// Tried and failed.
    Failed,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    /// The user or token name; `-` when nobody signed in.
    pub user: String,
    /// `administrator`, `operator`, `readonly`, or empty when nobody signed in.
    pub role: String,
    /// The client address, or `cli` for the offline commands.
    pub peer: String,
    /// What was done, e.g. `POST /api/v1/uploads`, `user.add`, `redfish.InsertMedia`.
    pub action: String,
    /// What it was done to (an item, a user, a system).
    pub target: String,
    pub outcome: Outcome,
    /// The HTTP status or a short reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The append-only log of one state folder.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

/// Why the log could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the audit log {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_FIELD {
        return text.to_string();
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

impl AuditLog {
    /// Opens (creating) `STATE/audit.jsonl` for appending.
    pub fn open(state_dir: &Path) -> Result<AuditLog, AuditError> {
        let path = state_dir.join(AUDIT_FILE);
        let fail = |source| AuditError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(fail)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(fail)?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
        })
    }

    /// Records that `who` (from `peer`) did `action` to `target` with `outcome`.
    pub fn record(
        &self,
        who: Option<&Principal>,
        peer: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: Option<&str>,
    ) {
        self.append(&AuditRecord {
            time: jiff::Timestamp::now().to_string(),
            user: clip(who.map_or("-", |p| p.name.as_str())),
            role: who.map_or("", |p| p.role.as_str()).to_string(),
            peer: clip(peer),
            action: clip(action),
            target: clip(target),
            outcome,
            detail: detail.map(clip),
        });
    }

    fn append(&self, record: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write of the whole line (O_APPEND): lines never interleave.
        if let Err(error) = file.write_all(&line) {
            tracing::error!(%error, path = %self.path.display(), "cannot write the audit log");
        }
    }

    /// The records of the last `MAX_QUERY_BYTES` of the log, oldest first, each with its
    /// byte offset (a stable cursor).
    pub fn read(&self) -> Result<Vec<(u64, AuditRecord)>, AuditError> {
        let fail = |source| AuditError {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(fail)?;
        let len = file.metadata().map_err(fail)?.len();
        let start = len.saturating_sub(MAX_QUERY_BYTES);
        file.seek(SeekFrom::Start(start)).map_err(fail)?;
        let mut bytes = Vec::new();
        file.take(MAX_QUERY_BYTES)
            .read_to_end(&mut bytes)
            .map_err(fail)?;
        let mut records = Vec::new();
        let mut offset = start;
        let mut first = start != 0;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let at = offset;
            offset += line.len() as u64;
            // Reading from the middle of the file: the first piece is part of a line.
            if std::mem::take(&mut first) {
                continue;
            }
            // A torn last line (no newline) or a damaged one is skipped.
            if line.last() != Some(&b'\n') {
                continue;
            }
            if let Ok(record) = serde_json::from_slice::<AuditRecord>(line) {
                records.push((at, record));
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn records_are_lines_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        let who = Principal {
            name: "alice".into(),
            role: Role::Operator,
        };
        log.record(
            Some(&who),
            "127.0.0.1:5",
            "rollback",
            "deb",
            Outcome::Success,
            None,
        );
        log.record(
            None,
            "10.0.0.1:6",
            "GET /x",
            "x",
            Outcome::Denied,
            Some("401"),
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(AUDIT_FILE))
            .unwrap()
            .write_all(b"{\"time\":\"torn")
            .unwrap();
        let records = log.read().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].1.user, "alice");
        assert_eq!(records[0].1.role, "operator");
        assert_eq!(records[1].1.user, "-");
        assert_eq!(records[1].1.outcome, Outcome::Denied);
        assert!(records[1].0 > records[0].0);
    }
}
