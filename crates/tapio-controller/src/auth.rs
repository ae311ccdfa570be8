//! Optional bearer-token auth for `/v1/agents/*` and `/v1/events`: one shared token, or
//! (`--auth kubernetes`) each agent's ServiceAccount token checked by
//! [`crate::k8s::tokenreview`], which binds the agent to a node ([`AuthorizedNode`]).
//!
//! Only a SHA-256 digest of the token is kept, and a presented token is compared by
//! digest with a constant-time fold, so neither the token's length nor the position of
//! the first differing byte leaks through timing. [`BearerToken`] never prints its value.

use std::fmt;

use sha2::{Digest, Sha256};

/// The token agents must present. Debug output is redacted.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
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
    fn debug_is_redacted() {
        let t = BearerToken::new("topsecret".into());
        let shown = format!("{t:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
