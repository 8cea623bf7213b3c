//! Who may do what on a secure cluster: users, their roles and the table prefix a role is
//! limited to.

use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Everything: tables, keys, the admin API and users.
    Admin,
    /// Read and write keys of its tables, read the cluster's state.
    ReadWrite,
    /// Read keys of its tables and the cluster's state.
    ReadOnly,
}

impl Role {
    /// The role's name as users type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadWrite => "readwrite",
            Role::ReadOnly => "readonly",
        }
    }

    /// Parses `admin`, `readwrite` or `readonly`.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "readwrite" => Role::ReadWrite,
            "readonly" => Role::ReadOnly,
            _ => return None,
        })
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// Read keys of a table.
    Read(&'a str),
    /// Write keys of a table.
    Write(&'a str),
    /// See the cluster's state (nodes, tables, partitions, metrics).
    Observe,
    /// Change tables or the cluster, manage users, read logs.
    Admin,
}

/// A user of a secure cluster (its token is kept only as a hash, elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The table name prefix the role is limited to (empty: every table). Admin is never
    /// limited.
    pub tables: String,
}

/// The user whose client certificate is an admin's without being added.
pub const ROOT_USER: &str = "root";

impl User {
    /// `root`: admin by its client certificate.
    pub fn root() -> User {
        User {
            name: ROOT_USER.into(),
            role: Role::Admin,
            tables: String::new(),
        }
    }

    /// Whether this user may do `access`.
    pub fn allows(&self, access: Access<'_>) -> bool {
        let table_ok = |t: &str| t.starts_with(&self.tables);
        match (self.role, access) {
            (Role::Admin, _) => true,
            (_, Access::Observe) => true,
            (Role::ReadWrite, Access::Read(t) | Access::Write(t)) => table_ok(t),
            (Role::ReadOnly, Access::Read(t)) => table_ok(t),
            (Role::ReadOnly, Access::Write(_)) | (_, Access::Admin) => false,
        }
    }

    /// Why `access` is refused, for the error message.
    pub fn refusal(&self, access: Access<'_>) -> String {
        let scope = if self.tables.is_empty() {
            String::new()
        } else {
            format!(" on tables starting with {:?}", self.tables)
        };
        let what = match access {
            Access::Read(t) => format!("read table {t:?}"),
            Access::Write(t) => format!("write table {t:?}"),
            Access::Observe => "see the cluster".into(),
            Access::Admin => "do this (it needs the admin role)".into(),
        };
        format!(
            "user {:?} ({}{scope}) may not {what}",
            self.name,
            self.role.as_str()
        )
    }
}

/// Checks a new user's name: 1 to 63 letters, digits, `_`, `-` or `.`.
pub fn validate_user_name(name: &str) -> Result<(), crate::Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(crate::Error::InvalidArgument(format!(
            "user name {name:?}: use 1 to 63 letters, digits, `_`, `-` or `.`"
        )));
    }
    if name == ROOT_USER || name == "node" {
        return Err(crate::Error::InvalidArgument(format!(
            "user name {name:?} is reserved (root is the admin of the client certificate, node names the cluster's nodes)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, tables: &str) -> User {
        User {
            name: "u".into(),
            role,
            tables: tables.into(),
        }
    }

    #[test]
    fn roles_allow_what_they_say_within_their_prefix() {
        let ro = user(Role::ReadOnly, "");
        assert!(ro.allows(Access::Read("t")) && ro.allows(Access::Observe));
        assert!(!ro.allows(Access::Write("t")) && !ro.allows(Access::Admin));
        let rw = user(Role::ReadWrite, "app_");
        assert!(rw.allows(Access::Read("app_x")) && rw.allows(Access::Write("app_x")));
        assert!(!rw.allows(Access::Read("other")) && !rw.allows(Access::Write("other")));
        assert!(!rw.allows(Access::Admin));
        assert!(rw.refusal(Access::Write("other")).contains("\"app_\""));
        let admin = user(Role::Admin, "app_");
        assert!(admin.allows(Access::Write("other")) && admin.allows(Access::Admin));
        assert!(User::root().allows(Access::Admin));
        for r in [Role::Admin, Role::ReadWrite, Role::ReadOnly] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert!(validate_user_name("app-1").is_ok());
        assert!(validate_user_name("root").is_err());
        assert!(validate_user_name("a b").is_err());
    }
}
