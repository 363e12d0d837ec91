//! Who is asking: users, API tokens and roles, checked the same way for REST and Redfish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Administrator,
    Operator,
    Readonly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Role {
    /// May this role change things (power, media, library)? Readonly may not.
    pub fn may_change(self) -> bool {
        !matches!(self, Role::Readonly)
    }
    /// May this role manage users and accounts? Only administrators.
    pub fn may_administer(self) -> bool {
        matches!(self, Role::Administrator)
    }
}

/// Checks credentials; implemented by the daemon's user store.
pub trait Authenticate: Send + Sync {
    /// HTTP Basic or a Redfish session login: name and password.
    fn password(&self, name: &str, password: &str) -> Option<Principal>;
    /// A bearer token (API token or a session token minted by `open_session`).
    fn token(&self, token: &str) -> Option<Principal>;
    /// Mints a session token for a principal (Redfish SessionService, console login); returns (id, token).
    fn open_session(&self, who: &Principal) -> (String, String);
    /// Ends a session by id; false if unknown.
    fn close_session(&self, id: &str) -> bool;
}
