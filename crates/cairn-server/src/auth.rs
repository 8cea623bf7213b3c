//! Who is calling a secure node, and whether their role allows the request.
//!
//! A caller shows a bearer token or a client certificate of the cluster's CA (verified in
//! the TLS handshake; its common name is the user, `root` being admin). The metadata group
//! holds the users with the SHA-256 of their tokens; a node asks it once per credential and
//! remembers the answer for a few seconds, so that a removed user is locked out within
//! [`AUTH_TTL`] everywhere and at once on the node that removed it. An insecure node
//! (no `--certs-dir`) authenticates nobody and allows everything.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use cairn_router::{Credential, MetaReply, MetaRequest};
use cairn_types::{Access, Error, Result, Role, User};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::node::Node;

/// How long a node trusts what the metadata group said about a credential.
pub const AUTH_TTL: Duration = Duration::from_secs(5);
/// How long a refused credential stays refused without asking again.
const REFUSED_TTL: Duration = Duration::from_secs(1);
/// How long a credential once accepted stays accepted while the metadata group cannot be
/// asked (a leader election, a partition): client traffic to partitions that still serve
/// must not stop because the metadata leader is away for a few seconds.
const STALE_OK: Duration = Duration::from_secs(300);
/// Entries a node remembers at most. When full it forgets refusals and outdated entries
/// first, so that a stream of made-up tokens cannot push out the users it accepted (and
/// with them their [`STALE_OK`] cover while the metadata group is away), then everything.
const MAX_ENTRIES: usize = 10_000;
/// What a token starts with, so that one pasted in the wrong place is recognisable.
const TOKEN_PREFIX: &str = "cairn_";

/// Credentials recently checked with the metadata group.
#[derive(Default)]
pub(crate) struct AuthCache {
    /// What the metadata group said of each credential, and when.
    entries: Mutex<HashMap<Credential, (Option<User>, Instant)>>,
}

impl AuthCache {
    /// The answer for `c` if it is recent enough to use without asking again.
    fn get(&self, c: &Credential) -> Option<Option<User>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (user, at) = entries.get(c)?;
        let ttl = if user.is_some() {
            AUTH_TTL
        } else {
            REFUSED_TTL
        };
        (at.elapsed() < ttl).then(|| user.clone())
    }

    /// The user `c` was accepted as within [`STALE_OK`], for when the metadata group
    /// cannot be asked.
    fn stale(&self, c: &Credential) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (user, at) = entries.get(c)?;
        user.clone().filter(|_| at.elapsed() < STALE_OK)
    }

    fn put(&self, c: Credential, user: Option<User>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (user, at)| user.is_some() && at.elapsed() < STALE_OK);
            // Room for a while, so the next puts do not scan the whole map again.
            if entries.len() > MAX_ENTRIES / 4 * 3 {
                entries.clear();
            }
        }
        entries.insert(c, (user, Instant::now()));
    }

    /// Forgets everything (after a user was removed here).
    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The SHA-256 of a token, as the metadata group keeps it.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of `parts`, each length-prefixed, so that no two lists of parts share an
/// encoding.
pub(crate) fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// A stable, nonzero 64-bit id of `parts` ([`digest`]): the write ids that HTTP idempotency
/// keys and per-user gRPC client ids become, the same on every node.
pub(crate) fn stable_id<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest(parts)[..8]);
    // Never 0, which means "no id".
    u64::from_le_bytes(id).max(1)
}

/// A new token: 256 random bits from the operating system's generator.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What a request showed: the common name of its client certificate and its bearer token.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shown<'a> {
    /// The user named by a verified client certificate.
    pub(crate) certificate: Option<&'a str>,
    /// The token of an `Authorization: Bearer` header.
    pub(crate) token: Option<&'a str>,
}

impl Shown<'_> {
    /// The token of an `authorization` header value, if it is a bearer token.
    pub(crate) fn bearer(header: Option<&str>) -> Option<&str> {
        let h = header?.trim();
        let (scheme, token) = h.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
            .filter(|t| !t.is_empty())
    }
}

impl Node {
    /// The user making a request (`None` on an insecure node, where everything is
    /// allowed). A token wins over a certificate, so a root certificate can act as a user.
    pub(crate) async fn authenticate(&self, shown: Shown<'_>) -> Result<Option<User>> {
        if !self.secure {
            return Ok(None);
        }
        let credential = match (shown.token, shown.certificate) {
            (Some(t), _) => Credential::Token(token_hash(t)),
            (None, Some(cn)) if cn != cairn_proto::tls::NODE_NAME => {
                Credential::Certificate(cn.to_string())
            }
            _ => {
                return Err(Error::Unauthenticated(
                    "this cluster is secure: pass a token (--token, CAIRN_TOKEN or HTTP `Authorization: Bearer TOKEN`) or a client certificate (`cairn cert create-client`)".into(),
                ));
            }
        };
        let user = match self.auth.get(&credential) {
            Some(u) => u,
            None => {
                let deadline = Instant::now() + Duration::from_secs(5);
                // Boxed: a cache miss is rare, and inline the metadata call would make every
                // request's future (which holds this one) KiBs larger.
                let answer = Box::pin(
                    self.router
                        .meta(MetaRequest::Authenticate(credential.clone()), deadline),
                )
                .await;
                let user = match answer {
                    Ok(MetaReply::Principal(u)) => u,
                    Err(e) if e.is_retryable() => match self.auth.stale(&credential) {
                        // Known a little while ago: keep serving through the outage.
                        Some(u) => return Ok(Some(u)),
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                    Ok(other) => {
                        return Err(Error::Internal(format!(
                            "the metadata leader answered {other:?} to an authentication"
                        )));
                    }
                };
                self.auth.put(credential.clone(), user.clone());
                user
            }
        };
        match (user, credential) {
            (Some(u), _) => Ok(Some(u)),
            (None, Credential::Token(_)) => Err(Error::Unauthenticated(
                "the token is not valid (mistyped, or its user was removed); `cairn user add` makes a new one".into(),
            )),
            (None, Credential::Certificate(name)) => Err(Error::Unauthenticated(format!(
                "the client certificate names user {name:?}, who does not exist; add it with `cairn user add {name} --role ROLE`"
            ))),
        }
    }

    /// Checks that the caller may do `access`; nothing is done when it may not. Answers
    /// the caller's user name (`None` on an insecure node).
    pub(crate) async fn authorize(
        &self,
        shown: Shown<'_>,
        access: Access<'_>,
    ) -> Result<Option<String>> {
        match self.authenticate(shown).await? {
            Some(u) if !u.allows(access) => Err(Error::PermissionDenied(u.refusal(access))),
            u => Ok(u.map(|u| u.name)),
        }
    }

    /// Adds a user and answers its token, which is shown only now. With `token_hash` (a
    /// user restored from a backup) the user keeps the token it had, and none is answered.
    pub async fn add_user(
        &self,
        name: &str,
        role: Role,
        tables: &str,
        token_hash: Option<[u8; 32]>,
    ) -> Result<Option<String>> {
        cairn_types::validate_user_name(name)?;
        let (token, hash) = match token_hash {
            Some(h) => (None, h),
            None => {
                let t = new_token();
                let h = self::token_hash(&t);
                (Some(t), h)
            }
        };
        let user = User {
            name: name.to_string(),
            role,
            tables: tables.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        self.router
            .meta(
                MetaRequest::AddUser {
                    user,
                    token_hash: hash,
                },
                deadline,
            )
            .await?;
        Ok(token)
    }

    /// Removes a user: its token stops working here at once, elsewhere within [`AUTH_TTL`].
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        self.router
            .meta(MetaRequest::RemoveUser(name.to_string()), deadline)
            .await?;
        self.auth.clear();
        Ok(())
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        match self.router.meta(MetaRequest::ListUsers, deadline).await? {
            MetaReply::Users(u) => Ok(u),
            other => Err(Error::Internal(format!(
                "the metadata leader answered {other:?} to a user list"
            ))),
        }
    }

    /// Every user with the SHA-256 of its token, by name (for a backup).
    pub async fn user_records(&self) -> Result<Vec<(User, [u8; 32])>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        match self.router.meta(MetaRequest::UserRecords, deadline).await? {
            MetaReply::UserRecords(u) => Ok(u),
            other => Err(Error::Internal(format!(
                "the metadata leader answered {other:?} to a user list"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() >= 40, "{a}");
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(Shown::bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(Shown::bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(Shown::bearer(Some("Basic abc")), None);
        assert_eq!(Shown::bearer(None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn made_up_tokens_do_not_push_out_accepted_users() {
        let cache = AuthCache::default();
        let ok = Credential::Token([1; 32]);
        cache.put(ok.clone(), Some(User::root()));
        for i in 0..3 * MAX_ENTRIES as u32 {
            let mut made_up = [0u8; 32];
            made_up[..4].copy_from_slice(&i.to_le_bytes());
            made_up[31] = 9;
            cache.put(Credential::Token(made_up), None);
        }
        assert_eq!(cache.get(&ok), Some(Some(User::root())));
        assert!(cache.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_used_for_a_while_and_kept_for_outages() {
        let cache = AuthCache::default();
        let (ok, bad) = (Credential::Token([1; 32]), Credential::Token([2; 32]));
        cache.put(ok.clone(), Some(User::root()));
        cache.put(bad.clone(), None);
        assert_eq!(cache.get(&ok), Some(Some(User::root())));
        assert_eq!(cache.get(&bad), Some(None));
        tokio::time::advance(REFUSED_TTL).await;
        assert_eq!(cache.get(&bad), None, "a refusal is asked again soon");
        assert!(cache.get(&ok).is_some());
        tokio::time::advance(AUTH_TTL).await;
        assert_eq!(
            cache.get(&ok),
            None,
            "an acceptance is asked again after the TTL"
        );
        assert_eq!(cache.stale(&ok), Some(User::root()));
        assert_eq!(
            cache.stale(&bad),
            None,
            "a refusal never stands in for an answer"
        );
        tokio::time::advance(STALE_OK).await;
        assert_eq!(cache.stale(&ok), None);
        cache.put(ok.clone(), Some(User::root()));
        cache.clear();
        assert_eq!(cache.stale(&ok), None);
    }
}
