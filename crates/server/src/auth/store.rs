//! The daemon's user store in `STATE/auth/`: users with argon2 password hashes, API tokens and
//! sessions (both stored as SHA-256 of their secret part, never the secret), each file written
//! whole through `AtomicFile` with fsync, so a SIGKILL leaves the old or the new file.
//!
//! `accounts.json` (users and tokens) may be changed by `vmedia user`/`vmedia token` while the
//! daemon runs: every change takes `auth/.lock` (flock) and re-reads the file first, and the
//! daemon re-reads it when its size, inode or modification time moved.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmedia_io::{AtomicFile, Durability, OverwritePolicy};

use super::{Authenticate, Principal, Role};

/// Largest `accounts.json`/`sessions.json` read: thousands of accounts fit; a larger file is
/// not ours.
pub const MAX_STORE_BYTES: u64 = 16 << 20;
/// Failed password logins per name (and per client address in the middleware) within
/// `LOGIN_WINDOW` before further attempts are refused without checking: slows guessing.
pub const MAX_FAILED_LOGINS: u32 = 5;
/// The window failed logins are counted in.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// A session token's lifetime from its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest is ended beyond it (a login loop cannot grow the file).
pub const MAX_SESSIONS: usize = 4096;
/// How long a password that passed argon2 is remembered (by its SHA-256), so HTTP Basic on
/// every request of an upload does not cost an argon2 run each.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Longest user or token name.
pub const MAX_NAME: usize = 64;
/// Longest password accepted (argon2 takes any length; this bounds the work a request causes).
pub const MAX_PASSWORD: usize = 1024;

const TOKEN_PREFIX: &str = "vmt_";
const SESSION_PREFIX: &str = "vms_";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot use the user store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the user store {path} is damaged: {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error("invalid name {name:?}: {problem}")]
    InvalidName { name: String, problem: String },
    #[error("invalid password: {0}")]
    InvalidPassword(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no such user or token: {0}")]
    NotFound(String),
    #[error("unknown role {0:?} (administrator, operator or readonly)")]
    UnknownRole(String),
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(text: &str) -> Result<Role, AuthError> {
        match text.to_ascii_lowercase().as_str() {
            "administrator" | "admin" => Ok(Role::Administrator),
            "operator" => Ok(Role::Operator),
            "readonly" | "read-only" => Ok(Role::Readonly),
            _ => Err(AuthError::UnknownRole(text.to_string())),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Operator => "operator",
            Role::Readonly => "readonly",
        }
    }
}

impl utoipa::PartialSchema for Role {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(["administrator", "operator", "readonly"]))
            .description(Some(
                "administrator: everything; operator: changes media and library; readonly: reads",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Role {}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredUser {
    name: String,
    role: Role,
    /// PHC string (argon2id).
    password: String,
    created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    id: String,
    name: String,
    role: Role,
    /// SHA-256 (hex) of the token's secret part.
    hash: String,
    created: String,
    expires: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Accounts {
    #[serde(default)]
    users: Vec<StoredUser>,
    #[serde(default)]
    tokens: Vec<StoredToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSession {
    id: String,
    name: String,
    role: Role,
    hash: String,
    expires: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sessions {
    #[serde(default)]
    sessions: Vec<StoredSession>,
}

/// A user as listed (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub created: String,
}

/// An API token as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    /// The name requests made with it are recorded under.
    pub name: String,
    pub role: Role,
    pub created: String,
    pub expires: Option<String>,
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// Send as `Authorization: Bearer TOKEN`.
    pub token: String,
}

/// What identifies the accounts file on disk, to notice changes by another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    modified: Option<std::time::SystemTime>,
}

struct Loaded {
    accounts: Accounts,
    stamp: Option<Stamp>,
    sessions: Sessions,
    /// SHA-256 of `name\0password` -> (principal, when verified).
    verified: HashMap<[u8; 32], (Principal, Instant)>,
}

/// Failed attempts per key within a window.
#[derive(Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Keys the limiter tracks at most (a flood of distinct names cannot grow it without bound).
const MAX_LIMITER_KEYS: usize = 65536;

impl FailureLimiter {
    /// True when `key` failed `MAX_FAILED_LOGINS` times within the window.
    pub fn blocked(&self, key: &str) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        matches!(map.get(key), Some((count, since))
            if *count >= MAX_FAILED_LOGINS && since.elapsed() < LOGIN_WINDOW)
    }

    /// Counts a failure of `key`.
    pub fn failed(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_LIMITER_KEYS {
            map.retain(|_, (_, since)| since.elapsed() < LOGIN_WINDOW);
            if map.len() >= MAX_LIMITER_KEYS {
                map.clear();
            }
        }
        let entry = map.entry(key.to_string()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= LOGIN_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
    }

    /// Forgets `key`'s failures (after a success).
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The users, tokens and sessions of one state folder.
pub struct UserStore {
    dir: PathBuf,
    loaded: Mutex<Loaded>,
    logins: FailureLimiter,
}

fn now_text() -> String {
    jiff::Timestamp::now().to_string()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// Checks a user or token name: letters, digits, `.`, `_`, `-`, `@`; not empty, not too long.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let fail = |problem: &str| {
        Err(AuthError::InvalidName {
            name: name.chars().take(MAX_NAME).collect(),
            problem: problem.to_string(),
        })
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > MAX_NAME {
        return fail("longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return fail("use only letters, digits, '.', '_', '-' and '@'");
    }
    Ok(())
}

impl UserStore {
    /// Opens (creating the folder) the store in `STATE/auth`.
    pub fn open(state_dir: &Path) -> Result<UserStore, AuthError> {
        let dir = state_dir.join("auth");
        std::fs::create_dir_all(&dir).map_err(|source| AuthError::Io {
            path: dir.clone(),
            source,
        })?;
        let store = UserStore {
            dir,
            loaded: Mutex::new(Loaded {
                accounts: Accounts::default(),
                stamp: None,
                sessions: Sessions::default(),
                verified: HashMap::new(),
            }),
            logins: FailureLimiter::default(),
        };
        let accounts_path = store.accounts_path();
        let (accounts, stamp) = read_json::<Accounts>(&accounts_path)?;
        let (sessions, _) = read_json::<Sessions>(&store.sessions_path())?;
        {
            let mut loaded = store.lock();
            loaded.accounts = accounts;
            loaded.stamp = stamp;
            loaded.sessions = sessions;
        }
        Ok(store)
    }

    fn accounts_path(&self) -> PathBuf {
        self.dir.join("accounts.json")
    }

    fn sessions_path(&self) -> PathBuf {
        self.dir.join("sessions.json")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads `accounts.json` when another process changed it.
    fn refresh(&self, loaded: &mut Loaded) {
        let path = self.accounts_path();
        let stamp = stamp_of(&path);
        if stamp == loaded.stamp {
            return;
        }
        match read_json::<Accounts>(&path) {
            Ok((accounts, stamp)) => {
                loaded.accounts = accounts;
                loaded.stamp = stamp;
                loaded.verified.clear();
            }
            // Keep serving with what was read before; the change is reported once per request.
            Err(error) => tracing::warn!(%error, "cannot re-read the user store"),
        }
    }

    /// Runs `change` on the accounts as they are on disk now, under the folder lock, and
    /// writes the result.
    fn change_accounts<T>(
        &self,
        change: impl FnOnce(&mut Accounts) -> Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        let _lock = self.folder_lock()?;
        let path = self.accounts_path();
        let (mut accounts, _) = read_json::<Accounts>(&path)?;
        let result = change(&mut accounts)?;
        write_json(&path, &accounts)?;
        let mut loaded = self.lock();
        loaded.accounts = accounts;
        loaded.stamp = stamp_of(&path);
        loaded.verified.clear();
        Ok(result)
    }

    fn folder_lock(&self) -> Result<File, AuthError> {
        let path = self.dir.join(".lock");
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(e.into()))?;
        Ok(file)
    }

    /// Adds a user with an argon2id hash of `password`.
    pub fn add_user(&self, name: &str, role: Role, password: &str) -> Result<UserInfo, AuthError> {
        check_name(name)?;
        if password.is_empty() || password.len() > MAX_PASSWORD {
            return Err(AuthError::InvalidPassword(format!(
                "between 1 and {MAX_PASSWORD} bytes"
            )));
        }
        let salt = SaltString::generate(&mut rand_core::OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AuthError::InvalidPassword(e.to_string()))?
            .to_string();
        self.change_accounts(|accounts| {
            if accounts.users.iter().any(|u| u.name == name) {
                return Err(AuthError::Exists(name.to_string()));
            }
            let user = StoredUser {
                name: name.to_string(),
                role,
                password: hash,
                created: now_text(),
            };
            let info = UserInfo {
                name: user.name.clone(),
                role,
                created: user.created.clone(),
            };
            accounts.users.push(user);
            Ok(info)
        })
    }

    /// Removes a user, its tokens and its sessions.
    pub fn remove_user(&self, name: &str) -> Result<(), AuthError> {
        self.change_accounts(|accounts| {
            let before = accounts.users.len();
            accounts.users.retain(|u| u.name != name);
            if accounts.users.len() == before {
                return Err(AuthError::NotFound(name.to_string()));
            }
            accounts.tokens.retain(|t| t.name != name);
            Ok(())
        })?;
        self.end_sessions_of(name);
        Ok(())
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<UserInfo> {
        let mut loaded = self.lock();
        self.refresh(&mut loaded);
        let mut users: Vec<UserInfo> = loaded
            .accounts
            .users
            .iter()
            .map(|u| UserInfo {
                name: u.name.clone(),
                role: u.role,
                created: u.created.clone(),
            })
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Creates an API token acting as `name` with `role`, valid for `lifetime` (forever
    /// without).
    pub fn create_token(
        &self,
        name: &str,
        role: Role,
        lifetime: Option<Duration>,
    ) -> Result<NewToken, AuthError> {
        check_name(name)?;
        let id = random_hex::<8>();
        let secret = random_hex::<32>();
        let now = jiff::Timestamp::now();
        let expires = match lifetime {
            Some(d) => Some(
                jiff::SignedDuration::try_from(d)
                    .ok()
                    .and_then(|d| now.checked_add(d).ok())
                    .ok_or_else(|| AuthError::InvalidName {
                        name: name.to_string(),
                        problem: "the token's lifetime is too long".into(),
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let stored = StoredToken {
            id: id.clone(),
            name: name.to_string(),
            role,
            hash: sha256_hex(&secret),
            created: now.to_string(),
            expires,
        };
        let info = token_info(&stored);
        self.change_accounts(|accounts| {
            accounts.tokens.push(stored);
            Ok(())
        })?;
        Ok(NewToken {
            info,
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
        })
    }

    /// Every API token (without secrets).
    pub fn tokens(&self) -> Vec<TokenInfo> {
        let mut loaded = self.lock();
        self.refresh(&mut loaded);
        loaded.accounts.tokens.iter().map(token_info).collect()
    }

    /// Revokes a token by id.
    pub fn revoke_token(&self, id: &str) -> Result<(), AuthError> {
        self.change_accounts(|accounts| {
            let before = accounts.tokens.len();
            accounts.tokens.retain(|t| t.id != id);
            if accounts.tokens.len() == before {
                return Err(AuthError::NotFound(id.to_string()));
            }
            Ok(())
        })
    }

    /// True when password logins for `key` are refused for now.
    pub fn login_blocked(&self, key: &str) -> bool {
        self.logins.blocked(key)
    }

    /// The name a session belongs to, while it lasts.
    pub fn session_owner(&self, id: &str) -> Option<String> {
        let loaded = self.lock();
        loaded
            .sessions
            .sessions
            .iter()
            .find(|s| s.id == id && !expired(Some(&s.expires)))
            .map(|s| s.name.clone())
    }

    fn end_sessions_of(&self, name: &str) {
        let mut loaded = self.lock();
        let before = loaded.sessions.sessions.len();
        loaded.sessions.sessions.retain(|s| s.name != name);
        if loaded.sessions.sessions.len() != before {
            self.save_sessions(&loaded.sessions);
        }
    }

    fn save_sessions(&self, sessions: &Sessions) {
        if let Err(error) = write_json(&self.sessions_path(), sessions) {
            tracing::warn!(%error, "cannot save the sessions");
        }
    }
}

fn token_info(t: &StoredToken) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role,
        created: t.created.clone(),
        expires: t.expires.clone(),
    }
}

fn expired(expires: Option<&str>) -> bool {
    match expires {
        None => false,
        Some(text) => match text.parse::<jiff::Timestamp>() {
            Ok(t) => t <= jiff::Timestamp::now(),
            // An unreadable expiry is treated as expired: fail closed.
            Err(_) => true,
        },
    }
}

/// Splits `PREFIXid_secret`.
fn split_token<'a>(token: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some((id, secret))
}

/// Compares two equal-length hex strings without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Authenticate for UserStore {
    fn password(&self, name: &str, password: &str) -> Option<Principal> {
        if password.len() > MAX_PASSWORD || name.len() > MAX_NAME {
            return None;
        }
        let key = format!("user:{name}");
        if self.logins.blocked(&key) {
            return None;
        }
        let mut fingerprint = Sha256::new();
        fingerprint.update(name.as_bytes());
        fingerprint.update([0]);
        fingerprint.update(password.as_bytes());
        let fingerprint: [u8; 32] = fingerprint.finalize().into();
        let stored = {
            let mut loaded = self.lock();
            self.refresh(&mut loaded);
            if let Some((principal, at)) = loaded.verified.get(&fingerprint) {
                if at.elapsed() < VERIFIED_FOR {
                    return Some(principal.clone());
                }
            }
            loaded
                .accounts
                .users
                .iter()
                .find(|u| u.name == name)
                .cloned()
        };
        // argon2 runs outside the lock: it takes tens of milliseconds.
        let ok = stored.as_ref().is_some_and(|user| {
            PasswordHash::new(&user.password)
                .map(|hash| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &hash)
                        .is_ok()
                })
                .unwrap_or(false)
        });
        match (ok, stored) {
            (true, Some(user)) => {
                self.logins.succeeded(&key);
                let principal = Principal {
                    name: user.name,
                    role: user.role,
                };
                let mut loaded = self.lock();
                if loaded.verified.len() >= MAX_SESSIONS {
                    loaded.verified.clear();
                }
                loaded
                    .verified
                    .insert(fingerprint, (principal.clone(), Instant::now()));
                Some(principal)
            }
            _ => {
                self.logins.failed(&key);
                None
            }
        }
    }

    fn token(&self, token: &str) -> Option<Principal> {
        let mut loaded = self.lock();
        if let Some((id, secret)) = split_token(token, TOKEN_PREFIX) {
            self.refresh(&mut loaded);
            let hash = sha256_hex(secret);
            let found = loaded.accounts.tokens.iter().find(|t| t.id == id)?;
            if !same(&found.hash, &hash) || expired(found.expires.as_deref()) {
                return None;
            }
            return Some(Principal {
                name: found.name.clone(),
                role: found.role,
            });
        }
        let (id, secret) = split_token(token, SESSION_PREFIX)?;
        let hash = sha256_hex(secret);
        let found = loaded.sessions.sessions.iter().find(|s| s.id == id)?;
        if !same(&found.hash, &hash) || expired(Some(&found.expires)) {
            return None;
        }
        Some(Principal {
            name: found.name.clone(),
            role: found.role,
        })
    }

    fn open_session(&self, who: &Principal) -> (String, String) {
        let id = random_hex::<8>();
        let secret = random_hex::<32>();
        let expires = jiff::SignedDuration::try_from(SESSION_LIFETIME)
            .ok()
            .and_then(|d| jiff::Timestamp::now().checked_add(d).ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let mut loaded = self.lock();
        loaded
            .sessions
            .sessions
            .retain(|s| !expired(Some(&s.expires)));
        if loaded.sessions.sessions.len() >= MAX_SESSIONS {
            loaded.sessions.sessions.remove(0);
        }
        loaded.sessions.sessions.push(StoredSession {
            id: id.clone(),
            name: who.name.clone(),
            role: who.role,
            hash: sha256_hex(&secret),
            expires: expires.to_string(),
        });
        self.save_sessions(&loaded.sessions);
        (id.clone(), format!("{SESSION_PREFIX}{id}_{secret}"))
    }

    fn close_session(&self, id: &str) -> bool {
        let mut loaded = self.lock();
        let before = loaded.sessions.sessions.len();
        loaded.sessions.sessions.retain(|s| s.id != id);
        let closed = loaded.sessions.sessions.len() != before;
        if closed {
            self.save_sessions(&loaded.sessions);
        }
        closed
    }
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        inode: meta.ino(),
        modified: meta.modified().ok(),
    })
}

/// Reads a JSON store file; a missing file is the empty default.
fn read_json<T: Default + for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<(T, Option<Stamp>), AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stamp = stamp_of(path);
    let bytes = match std::fs::File::open(path) {
        Ok(file) => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(file, MAX_STORE_BYTES + 1),
                &mut bytes,
            )
            .map_err(io)?;
            bytes
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((T::default(), None)),
        Err(e) => return Err(io(e)),
    };
    if bytes.len() as u64 > MAX_STORE_BYTES {
        return Err(AuthError::Damaged {
            path: path.to_path_buf(),
            problem: format!("larger than {MAX_STORE_BYTES} bytes"),
        });
    }
    let value = serde_json::from_slice(&bytes).map_err(|e| AuthError::Damaged {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    Ok((value, stamp))
}

/// Writes a store file whole (hidden temporary, fsync, rename), readable by its owner only.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = AtomicFile::create(path, OverwritePolicy::Replace).map_err(io)?;
    file.file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io(std::io::Error::other(e)))?;
    file.file_mut().write_all(&bytes).map_err(io)?;
    file.commit_with(Durability::Flush).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_tokens_and_sessions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::open(dir.path()).unwrap();
        store
            .add_user("alice", Role::Operator, "correct horse")
            .unwrap();
        assert!(matches!(
            store.add_user("alice", Role::Readonly, "x"),
            Err(AuthError::Exists(_))
        ));
        let token = store.create_token("ci", Role::Readonly, None).unwrap();
        let who = store.password("alice", "correct horse").unwrap();
        let (id, session) = store.open_session(&who);
        drop(store);
        let text = std::fs::read_to_string(dir.path().join("auth/accounts.json")).unwrap();
        assert!(!text.contains("correct horse") && !text.contains(&token.token[20..]));

        let store = UserStore::open(dir.path()).unwrap();
        assert_eq!(
            store.password("alice", "correct horse").unwrap().role,
            Role::Operator
        );
        assert!(store.password("alice", "wrong").is_none());
        assert_eq!(store.token(&token.token).unwrap().name, "ci");
        assert_eq!(store.token(&session).unwrap().name, "alice");
        assert!(store.close_session(&id));
        assert!(store.token(&session).is_none());
        assert!(!store.close_session(&id));
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::open(dir.path()).unwrap();
        let token = store.create_token("ci", Role::Operator, None).unwrap();
        let mut forged = token.token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(store.token(&forged).is_none());
        assert!(store.token("vmt_").is_none());
        assert!(store.token("").is_none());
        let old = store
            .create_token("old", Role::Operator, Some(Duration::ZERO))
            .unwrap();
        assert!(store.token(&old.token).is_none());
    }

    #[test]
    fn failed_logins_are_limited_per_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = UserStore::open(dir.path()).unwrap();
        store.add_user("bob", Role::Readonly, "pw").unwrap();
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(store.password("bob", "guess").is_none());
        }
        // Even the right password is refused until the window passes.
        assert!(store.password("bob", "pw").is_none());
        assert!(store.login_blocked("user:bob"));
    }

    #[test]
    fn another_process_adding_a_user_is_seen_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = UserStore::open(dir.path()).unwrap();
        assert!(daemon.users().is_empty());
        let cli = UserStore::open(dir.path()).unwrap();
        cli.add_user("carol", Role::Administrator, "pw").unwrap();
        assert_eq!(daemon.users().len(), 1);
        assert!(daemon.password("carol", "pw").is_some());
    }
}
