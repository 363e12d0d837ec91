//! `vmedia user add/ls/rm` and `vmedia token create/ls/rm`: the daemon's users and API tokens,
//! managed offline on its state folder (`--state DIR`, default the one `vmedia serve` uses).
//! A running daemon sees the change on its next request. With `--server URL` the same commands
//! go through that daemon's REST API instead (which records them in its audit log). Flags,
//! printing and exit codes only; the store is `vmedia_server::auth::UserStore`, the remote
//! client `vmedia_server::client`, and each change is written to the audit log.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vmedia_server::api::accounts::{NewUser, TokenRequest};
use vmedia_server::audit::{AuditLog, Outcome};
use vmedia_server::auth::{Principal, Role, UserStore};

/// Longest password file read (a password, not a document).
const MAX_PASSWORD_FILE: u64 = 4096;

const USER_EXAMPLES: &str = "Examples:\n  vmedia user add alice --role operator --password-file alice.pw\n  vmedia user ls --json\n  vmedia user rm alice\n\nRoles: administrator (everything, accounts, audit log), operator (changes media and the\nlibrary), readonly (reads only). The state folder is --state DIR, else the one `vmedia serve`\nuses by default.";

const TOKEN_EXAMPLES: &str = "Examples:\n  vmedia token create ci --role readonly\n  curl -H \"Authorization: Bearer $TOKEN\" -k https://host:8443/api/v1/library/items\n  vmedia token rm 3f2a9c0d11e4b5a6\n\nThe token is printed once; only its hash is stored.";

#[derive(clap::Args)]
pub struct StateArg {
    /// The daemon's state folder [default: the one `vmedia serve` uses]
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    state: Option<PathBuf>,
    #[command(flatten)]
    remote: crate::library::remote::RemoteArgs,
}

#[derive(clap::Subcommand)]
#[command(after_help = USER_EXAMPLES)]
pub enum UserCommand {
    /// Add a user with a role and a password (read from a file, first line)
    Add {
        name: String,
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// File holding the password (its first line; `-` reads standard input)
        #[arg(long = "password-file", value_name = "FILE")]
        password_file: PathBuf,
        #[command(flatten)]
        state: StateArg,
    },
    /// List users and their roles
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// Remove a user with its tokens and sessions
    Rm {
        name: String,
        #[command(flatten)]
        state: StateArg,
    },
}

#[derive(clap::Subcommand)]
#[command(after_help = TOKEN_EXAMPLES)]
pub enum TokenCommand {
    /// Create an API token acting as NAME with a role; prints the token once
    Create {
        name: String,
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// Lifetime, e.g. 3600s, 90m, 24h [default: until removed]
        #[arg(long = "expires-in", value_name = "DURATION")]
        expires_in: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// List API tokens (never their secrets)
    Ls {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// Revoke a token by id
    Rm {
        id: String,
        #[command(flatten)]
        state: StateArg,
    },
}

fn state_dir(arg: &StateArg) -> Result<PathBuf> {
    match &arg.state {
        Some(dir) => Ok(dir.clone()),
        None => Ok(crate::env::boot_config()
            .context("no --state and no data directory holding the daemon's state")?
            .state_dir()
            .join("serve")),
    }
}

fn open(arg: &StateArg) -> Result<(UserStore, AuditLog)> {
    let dir = state_dir(arg)?;
    let store = UserStore::open(&dir)?;
    let audit = AuditLog::open(&dir)?;
    Ok((store, audit))
}

/// Who the audit log records for an offline change: the local account running the command.
fn local() -> Principal {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    Principal {
        name: format!("local:{user}"),
        role: Role::Administrator,
    }
}

fn read_password(path: &PathBuf) -> Result<String> {
    let mut text = String::new();
    let reader: Box<dyn std::io::Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot read the password file {}", path.display()))?,
        )
    };
    std::io::Read::read_to_string(
        &mut std::io::Read::take(reader, MAX_PASSWORD_FILE),
        &mut text,
    )
    .with_context(|| format!("cannot read the password file {}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        bail!("the password file {} is empty", path.display());
    }
    Ok(password)
}

fn record<T, E: std::fmt::Display>(
    audit: &AuditLog,
    action: &str,
    target: &str,
    result: &std::result::Result<T, E>,
) {
    let (outcome, detail) = match result {
        Ok(_) => (Outcome::Success, None),
        Err(e) => (Outcome::Failed, Some(e.to_string())),
    };
    audit.record(
        Some(&local()),
        "cli",
        action,
        target,
        outcome,
        detail.as_deref(),
    );
}

pub fn run_user(command: UserCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Add {
            name,
            role,
            password_file,
            state,
        } => {
            let role: Role = role.parse()?;
            let password = read_password(&password_file)?;
            if let Some(client) = state.remote.client()? {
                let user = client.add_user(&NewUser {
                    name,
                    role,
                    password,
                })?;
                writeln!(out, "added {} ({})", user.name, user.role.as_str())?;
                return Ok(ExitCode::SUCCESS);
            }
            let (store, audit) = open(&state)?;
            let added = store.add_user(&name, role, &password);
            record(&audit, "user.add", &name, &added);
            let user = added?;
            writeln!(out, "added {} ({})", user.name, user.role.as_str())?;
        }
        UserCommand::Ls { json, state } => {
            let users = match state.remote.client()? {
                Some(client) => client.users()?,
                None => open(&state)?.0.users(),
            };
            if json {
                crate::print_json(&users)?;
            } else {
                for user in users {
                    writeln!(
                        out,
                        "{:<24} {:<14} {}",
                        user.name,
                        user.role.as_str(),
                        user.created
                    )?;
                }
            }
        }
        UserCommand::Rm { name, state } => {
            if let Some(client) = state.remote.client()? {
                client.remove_user(&name)?;
                writeln!(out, "removed {name}")?;
                return Ok(ExitCode::SUCCESS);
            }
            let (store, audit) = open(&state)?;
            let removed = store.remove_user(&name);
            record(&audit, "user.remove", &name, &removed);
            removed?;
            writeln!(out, "removed {name}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_token(command: TokenCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Create {
            name,
            role,
            expires_in,
            json,
            state,
        } => {
            let role: Role = role.parse()?;
            let lifetime = match &expires_in {
                Some(text) => Some(vmedia_server::config::parse_duration("expires-in", text)?),
                None => None,
            };
            let token = match state.remote.client()? {
                Some(client) => client.create_token(&TokenRequest {
                    name,
                    role,
                    expires_in: lifetime.map(|l| l.as_secs()),
                })?,
                None => {
                    let (store, audit) = open(&state)?;
                    let created = store.create_token(&name, role, lifetime);
                    record(&audit, "token.create", &name, &created);
                    created?
                }
            };
            if json {
                crate::print_json(&token)?;
            } else {
                writeln!(out, "{}", token.token)?;
            }
        }
        TokenCommand::Ls { json, state } => {
            let tokens = match state.remote.client()? {
                Some(client) => client.tokens()?,
                None => open(&state)?.0.tokens(),
            };
            if json {
                crate::print_json(&tokens)?;
            } else {
                for t in tokens {
                    writeln!(
                        out,
                        "{} {:<24} {:<14} {}",
                        t.id,
                        t.name,
                        t.role.as_str(),
                        t.expires.as_deref().unwrap_or("never expires")
                    )?;
                }
            }
        }
        TokenCommand::Rm { id, state } => {
            if let Some(client) = state.remote.client()? {
                client.revoke_token(&id)?;
                writeln!(out, "revoked {id}")?;
                return Ok(ExitCode::SUCCESS);
            }
            let (store, audit) = open(&state)?;
            let removed = store.revoke_token(&id);
            record(&audit, "token.remove", &id, &removed);
            removed?;
            writeln!(out, "revoked {id}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
