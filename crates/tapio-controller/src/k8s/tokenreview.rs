//! `--auth kubernetes`: an agent presents its projected ServiceAccount token; the API server
//! judges it (TokenReview, authentication.k8s.io/v1, with the `tapio` audience) and the
//! controller then requires the agent's ServiceAccount and the node the token is bound to.
//!
//! Accepted tokens are cached by SHA-256 digest (never the token itself), each entry no
//! longer than the configured TTL and never past the token's own `exp` claim, in a cache
//! of bounded size. Denials are not cached. At most [`MAX_CONCURRENT_REVIEWS`] reviews run
//! at once, so a flood of bad tokens cannot turn into a flood of API calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::metrics::K8sMetrics;
use super::store::Lookup;
use super::PodIndex;

/// Reviews in flight at once; further requests wait (up to the review timeout).
pub const MAX_CONCURRENT_REVIEWS: usize = 16;
/// Time one review may take, waiting for a slot included.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound node claim in the TokenReview user extra (Kubernetes 1.30+).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Bound pod UID claim, used to find the node when the node claim is absent.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who an accepted token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The node the token is bound to: the only node this agent may report for.
    pub node: String,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Not a valid token for this audience (401).
    Unauthenticated(String),
    /// A valid token that may not do this (403).
    Forbidden(String),
    /// The API server could not be asked (503; the agent retries).
    Unavailable(String),
}

/// Settings of the reviewer.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    /// Audience the token must carry (`tapio`).
    pub audience: String,
    /// Required ServiceAccount as `namespace:name`.
    pub service_account: String,
    /// Longest time an accepted token is trusted without asking again.
    pub cache_ttl: Duration,
    /// Most cached tokens.
    pub cache_entries: usize,
}

struct Cached {
    identity: Arc<AgentIdentity>,
    until: Instant,
}

/// Checks tokens with TokenReview.
pub struct TokenReviewer {
    client: kube::Client,
    settings: ReviewSettings,
    username: String,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    slots: Semaphore,
    pods: Option<Arc<PodIndex>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer; `pods` (the pod store, when the pod watch runs) resolves the node of
    /// tokens that carry only a bound pod.
    pub fn new(client: kube::Client, settings: ReviewSettings, pods: Option<Arc<PodIndex>>) -> Self {
        let username = match settings.service_account.split_once(':') {
            Some((ns, name)) => format!("system:serviceaccount:{ns}:{name}"),
            None => settings.service_account.clone(),
        };
        Self {
            client,
            settings,
            username,
            cache: Mutex::new(HashMap::new()),
            slots: Semaphore::new(MAX_CONCURRENT_REVIEWS),
            pods,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Authenticates a bearer token.
    pub async fn authenticate(&self, token: &[u8], m: &K8sMetrics) -> Result<Arc<AgentIdentity>, Denial> {
        let key: [u8; 32] = Sha256::digest(token).into();
        let now = Instant::now();
        if let Some(hit) = self.cache().get(&key).filter(|c| c.until > now) {
            m.token_cache_hits.inc();
            return Ok(Arc::clone(&hit.identity));
        }
        m.token_cache_misses.inc();
        let result = self.review(token, m).await;
        match &result {
            Ok(identity) => {
                m.token_review("accepted");
                self.remember(key, Arc::clone(identity), token, now, m);
            }
            Err(Denial::Unavailable(_)) => m.token_review("unavailable"),
            Err(_) => {}
        }
        result
    }

    fn remember(&self, key: [u8; 32], identity: Arc<AgentIdentity>, token: &[u8], now: Instant, m: &K8sMetrics) {
        let mut ttl = self.settings.cache_ttl;
        if let Some(left) = token_lifetime_left(token) {
            ttl = ttl.min(left);
        }
        if ttl.is_zero() {
            return;
        }
        let mut cache = self.cache();
        if cache.len() >= self.settings.cache_entries && !cache.contains_key(&key) {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= self.settings.cache_entries {
                // Full of live entries: this token is checked again next time.
                m.token_cache_entries.set(i64::try_from(cache.len()).unwrap_or(i64::MAX));
                return;
            }
        }
        cache.insert(key, Cached { identity, until: now + ttl });
        m.token_cache_entries.set(i64::try_from(cache.len()).unwrap_or(i64::MAX));
    }

    async fn review(&self, token: &[u8], m: &K8sMetrics) -> Result<Arc<AgentIdentity>, Denial> {
        let Ok(token) = std::str::from_utf8(token) else {
            m.token_review("malformed");
            return Err(Denial::Unauthenticated("the token is not text".into()));
        };
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let asked = tokio::time::timeout(REVIEW_TIMEOUT, async {
            let _slot = self.slots.acquire().await;
            api.create(&PostParams::default(), &request).await
        })
        .await;
        let status = match asked {
            Ok(Ok(review)) => review.status.unwrap_or_default(),
            Ok(Err(e)) => return Err(Denial::Unavailable(format!("TokenReview failed: {e}"))),
            Err(_) => return Err(Denial::Unavailable("TokenReview timed out".into())),
        };
        self.judge(status, m)
    }

    /// Turns a TokenReview status into a decision.
    fn judge(&self, status: TokenReviewStatus, m: &K8sMetrics) -> Result<Arc<AgentIdentity>, Denial> {
        if status.authenticated != Some(true) {
            m.token_review("denied");
            let why = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(Denial::Unauthenticated(format!("token rejected: {why}")));
        }
        // The API server answers with the audiences the token is valid for among those
        // asked; an authenticator that ignores audiences leaves it empty, so check it.
        if !status.audiences.as_ref().is_some_and(|a| a.contains(&self.settings.audience)) {
            m.token_review("wrong_audience");
            return Err(Denial::Unauthenticated(format!("token is not for audience {}", self.settings.audience)));
        }
        let user = status.user.unwrap_or_default();
        if user.username.as_deref() != Some(self.username.as_str()) {
            m.token_review("wrong_service_account");
            return Err(Denial::Forbidden(format!(
                "only ServiceAccount {} may report as an agent",
                self.settings.service_account
            )));
        }
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).filter(|s| !s.is_empty()).cloned();
        let node = first(NODE_NAME_EXTRA).or_else(|| {
            let uid = first(POD_UID_EXTRA)?;
            self.pods.as_ref()?.read(|s| match s.get(&uid) {
                Lookup::Live(p) if !p.node.is_empty() => Some(p.node.to_string()),
                _ => None,
            })
        });
        let Some(node) = node else {
            m.token_review("no_node");
            return Err(Denial::Forbidden("the token is not bound to a pod on a known node".into()));
        };
        Ok(Arc::new(AgentIdentity { node }))
    }
}

/// Time until the token's `exp` claim, if it is a JWT that has one. The signature is not
/// checked here: the TokenReview did that; this only keeps the cache from outliving it.
pub fn token_lifetime_left(token: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(token).ok()?;
    let payload = text.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", enc(serde_json::json!({"alg": "RS256"})), enc(serde_json::json!({"exp": exp})))
    }

    #[test]
    fn lifetime_comes_from_the_exp_claim() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let left = token_lifetime_left(jwt(now + 600).as_bytes()).unwrap();
        assert!(left <= Duration::from_secs(600) && left >= Duration::from_secs(590), "{left:?}");
        assert_eq!(token_lifetime_left(jwt(now - 5).as_bytes()), Some(Duration::ZERO));
        assert_eq!(token_lifetime_left(b"opaque-token"), None);
        assert_eq!(token_lifetime_left(b"a.!!!.c"), None);
    }
}
