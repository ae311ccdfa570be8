//! Optional bearer-token auth for `/v1/agents/*` and `/v1/events`: one shared token, or
//! (`--auth kubernetes`) each agent's ServiceAccount token checked by
//! [`crate::k8s::tokenreview`], which binds the agent to a node ([`AuthorizedNode`]).
//!
//! Only a SHA-256 digest of the token is kept, and a presented token is compared by
//! digest with a constant-time fold, so neither the token's length nor the position of
//! the first differing byte leaks through timing. [`BearerToken`] never prints its value.

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// The token agents must present. Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    digest: [u8; 32],
}

/// How long the token read before a change of the token file stays valid: agents re-read
/// their copy of a rotated Secret when the kubelet updates it (up to a minute or two later)
/// or at a 401, so for a while both are in use.
pub const PREVIOUS_TOKEN_GRACE: Duration = Duration::from_secs(300);

/// The shared token in force, replaced when its file changes ([`SharedToken::replace`]);
/// the one before stays valid for [`PREVIOUS_TOKEN_GRACE`].
#[derive(Debug)]
pub struct SharedToken {
    tokens: RwLock<(BearerToken, Option<(BearerToken, Instant)>)>,
}

impl SharedToken {
    pub fn new(token: BearerToken) -> Self {
        Self { tokens: RwLock::new((token, None)) }
    }

    /// Checks an `Authorization` header value against the token, and the one before it
    /// while its grace lasts.
    pub fn authorizes(&self, header: Option<&[u8]>, now: Instant) -> bool {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let (current, previous) = &*tokens;
        // Both are checked, whatever the first says: the time taken tells nothing.
        let current_ok = current.authorizes(header);
        let previous_ok = previous.as_ref().is_some_and(|(token, replaced)| {
            token.authorizes(header) && now.duration_since(*replaced) < PREVIOUS_TOKEN_GRACE
        });
        current_ok | previous_ok
    }

    /// Puts `token` in force; the one it replaces stays valid for the grace period. False
    /// (nothing changed) when it is the token already in force.
    pub fn replace(&self, token: BearerToken, now: Instant) -> bool {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if tokens.0 == token {
            return false;
        }
        let replaced = std::mem::replace(&mut tokens.0, token);
        tokens.1 = Some((replaced, now));
        true
    }
}

impl BearerToken {
    /// Wraps a token; the plain text is dropped after hashing.
    pub fn new(token: String) -> Self {
        let digest = Sha256::digest(token.as_bytes()).into();
        Self { digest }
    }

    /// Constant-time check of a presented token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let other: [u8; 32] = Sha256::digest(presented).into();
        let diff = self.digest.iter().zip(other.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// Checks an `Authorization` header value (`Bearer <token>`, scheme case-insensitive).
    pub fn authorizes(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else {
            return false;
        };
        let Some(rest) = strip_scheme(value) else {
            return false;
        };
        self.matches(rest)
    }
}

/// The node an authenticated agent may report for, put in the request's extensions by the
/// auth middleware under `--auth kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedNode(pub std::sync::Arc<crate::k8s::tokenreview::AgentIdentity>);

/// Returns the credentials after a `Bearer` scheme and its spaces.
pub fn strip_scheme(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let start = rest.iter().position(|b| *b != b' ')?;
    if start == 0 {
        return None; // "Bearerxyz" is not the Bearer scheme
    }
    let creds = &rest[start..];
    // Trailing spaces are not part of a token68.
    let end = creds.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
    Some(&creds[..end])
}

/// Re-reads the shared token's file every `every` (a Secret rotated under a running
/// controller): a new valid token is put in force and logged (never shown); a file that
/// cannot be read or holds no valid token keeps the token in force, logged once per
/// distinct problem.
pub async fn watch_token_file(state: std::sync::Arc<crate::state::AppState>, path: PathBuf, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_problem: Option<String> = None;
    loop {
        tick.tick().await;
        let Some(shared) = state.auth.as_ref() else { return };
        let read = tapio_wire::capped::read_capped_string(&path, tapio_wire::capped::caps::TOKEN_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| crate::settings::token_from(&text, "--auth-token-file").map_err(|e| e.to_string()));
        match read {
            Ok(token) => {
                last_problem = None;
                if shared.replace(token, Instant::now()) {
                    log::info!(
                        "the agents' token file changed: the new token is in force, the previous one for {} s more",
                        PREVIOUS_TOKEN_GRACE.as_secs()
                    );
                }
            }
            Err(problem) => {
                if last_problem.as_deref() != Some(problem.as_str()) {
                    log::warn!("{problem}: the token in force stays");
                    last_problem = Some(problem);
                }
            }
        }
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_token() {
        let t = BearerToken::new("abc123".into());
        assert!(t.authorizes(Some(b"Bearer abc123")));
        assert!(t.authorizes(Some(b"bearer   abc123 ")));
        assert!(!t.authorizes(Some(b"Bearer abc1234")));
        assert!(!t.authorizes(Some(b"Bearer abc12")));
        assert!(!t.authorizes(Some(b"Bearerabc123")));
        assert!(!t.authorizes(Some(b"Basic abc123")));
        assert!(!t.authorizes(Some(b"Bearer ")));
        assert!(!t.authorizes(Some(b"abc123")));
        assert!(!t.authorizes(None));
    }

    #[test]
    fn a_replaced_token_stays_valid_for_its_grace_only() {
        let t0 = Instant::now();
        let shared = SharedToken::new(BearerToken::new("one".into()));
        assert!(shared.authorizes(Some(b"Bearer one"), t0));
        assert!(!shared.replace(BearerToken::new("one".into()), t0), "the same token changes nothing");
        assert!(shared.replace(BearerToken::new("two".into()), t0));
        let soon = t0 + PREVIOUS_TOKEN_GRACE - Duration::from_secs(1);
        assert!(shared.authorizes(Some(b"Bearer two"), soon));
        assert!(shared.authorizes(Some(b"Bearer one"), soon), "the old one while agents catch up");
        assert!(!shared.authorizes(Some(b"Bearer three"), soon));
        let later = t0 + PREVIOUS_TOKEN_GRACE;
        assert!(!shared.authorizes(Some(b"Bearer one"), later), "and no longer");
        assert!(shared.authorizes(Some(b"Bearer two"), later));
        // Only one token before the current one is kept.
        assert!(shared.replace(BearerToken::new("three".into()), later));
        assert!(!shared.authorizes(Some(b"Bearer one"), later));
        assert!(shared.authorizes(Some(b"Bearer two"), later));
    }

    #[test]
    fn debug_is_redacted() {
        let t = BearerToken::new("topsecret".into());
        let shown = format!("{t:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
