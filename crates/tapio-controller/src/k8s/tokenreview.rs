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
use k8s_openapi::api::core::v1::Pod;
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
/// Bound pod name claim (the pod is in the ServiceAccount's namespace).
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// What a TokenReview says about the token's binding.
enum Binding {
    /// Bound to this node.
    Node(String),
    /// Bound to a pod only (clusters before the node claim): its node is looked up.
    Pod { name: Option<String>, uid: String },
}

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
        let node = match self.judge(status, m)? {
            Binding::Node(node) => Some(node),
            Binding::Pod { name, uid } => self.node_of_pod(name.as_deref(), &uid).await?,
        };
        match node {
            Some(node) => Ok(Arc::new(AgentIdentity { node })),
            None => {
                m.token_review("no_node");
                Err(Denial::Forbidden("the token is not bound to a pod on a known node".into()))
            }
        }
    }

    /// The node of the pod a token is bound to: from the pod store when it holds the pod,
    /// else by a GET of the pod (in the ServiceAccount's namespace) whose UID must match;
    /// `None` when there is no such pod on a node. A GET that fails or times out says
    /// nothing about the token: [`Denial::Unavailable`] (the agent retries), not a 403.
    async fn node_of_pod(&self, name: Option<&str>, uid: &str) -> Result<Option<String>, Denial> {
        let stored = self.pods.as_ref().and_then(|pods| {
            pods.read(|s| match s.get(uid) {
                Lookup::Live(p) if !p.node.is_empty() => Some(p.node.to_string()),
                _ => None,
            })
        });
        if stored.is_some() {
            return Ok(stored);
        }
        let (Some((namespace, _)), Some(name)) = (self.settings.service_account.split_once(':'), name) else {
            return Ok(None);
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = match tokio::time::timeout(REVIEW_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(Some(pod))) => pod,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => return Err(Denial::Unavailable(format!("reading the token's pod failed: {e}"))),
            Err(_) => return Err(Denial::Unavailable("reading the token's pod timed out".into())),
        };
        if pod.metadata.uid.as_deref() != Some(uid) {
            return Ok(None); // a newer pod of the same name: not the one the token was bound to
        }
        Ok(pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
    }

    /// Checks a TokenReview status; returns what the token is bound to.
    fn judge(&self, status: TokenReviewStatus, m: &K8sMetrics) -> Result<Binding, Denial> {
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
        if let Some(node) = first(NODE_NAME_EXTRA) {
            return Ok(Binding::Node(node));
        }
        match first(POD_UID_EXTRA) {
            Some(uid) => Ok(Binding::Pod { name: first(POD_NAME_EXTRA), uid }),
            None => {
                m.token_review("no_node");
                Err(Denial::Forbidden("the token is not bound to a pod or a node".into()))
            }
        }
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
    // With the clock's fraction of a second, so an entry never outlives `exp` at all.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(Duration::from_secs(exp).saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", enc(serde_json::json!({"alg": "RS256"})), enc(serde_json::json!({"exp": exp})))
    }

    /// A reviewer for the chart's agents (audience `tapio`), without a pod store.
    fn reviewer(client: kube::Client) -> TokenReviewer {
        let settings = ReviewSettings {
            audience: "tapio".into(),
            service_account: "tapio-system:tapio-agent".into(),
            cache_ttl: Duration::from_secs(60),
            cache_entries: 4,
        };
        TokenReviewer::new(client, settings, None)
    }

    #[tokio::test]
    async fn an_authenticator_that_ignores_audiences_is_not_trusted_and_bindings_are_required() {
        use k8s_openapi::api::authentication::v1::UserInfo;
        let client = crate::k8s::client(Some("http://127.0.0.1:9")).await.unwrap();
        let r = reviewer(client);
        let m = K8sMetrics::default();
        let user = |name: &str, extra: &[(&str, &str)]| UserInfo {
            username: Some(name.into()),
            extra: Some(extra.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect()),
            ..UserInfo::default()
        };
        let agent = "system:serviceaccount:tapio-system:tapio-agent";
        let status = |audiences: Option<Vec<String>>, u: UserInfo| TokenReviewStatus {
            authenticated: Some(true),
            audiences,
            user: Some(u),
            error: None,
        };
        let tapio = Some(vec!["tapio".to_string()]);
        // Authenticated, but the answer does not say the token is for `tapio`.
        let e = r.judge(status(None, user(agent, &[(NODE_NAME_EXTRA, "n1")])), &m).err().unwrap();
        assert!(matches!(e, Denial::Unauthenticated(_)), "{e:?}");
        let e = r.judge(status(tapio.clone(), user("system:serviceaccount:default:default", &[])), &m).err().unwrap();
        assert!(matches!(e, Denial::Forbidden(_)), "{e:?}");
        let e = r.judge(status(tapio.clone(), user(agent, &[])), &m).err().unwrap();
        assert!(matches!(e, Denial::Forbidden(_)), "{e:?}");
        let ok = r.judge(status(tapio.clone(), user(agent, &[(NODE_NAME_EXTRA, "n1")])), &m).ok().unwrap();
        assert!(matches!(ok, Binding::Node(ref n) if n == "n1"));
        let pod = r.judge(status(tapio, user(agent, &[(POD_UID_EXTRA, "u"), (POD_NAME_EXTRA, "p")])), &m).ok().unwrap();
        assert!(matches!(pod, Binding::Pod { ref name, ref uid } if name.as_deref() == Some("p") && uid == "u"));
        for (result, n) in [("wrong_audience", 1), ("wrong_service_account", 1), ("no_node", 1)] {
            assert_eq!(m.token_reviews.get_or_create(&super::super::metrics::OutcomeLabels { result }).get(), n);
        }
    }

    /// A pod-bound token whose pod the store does not hold: the API server is asked, and
    /// when it cannot answer the agent is told to retry (503), not refused (403).
    #[tokio::test]
    async fn a_pod_lookup_that_fails_is_unavailable_not_a_denial() {
        // A port nothing listens on: every request fails at once.
        let unreachable = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let client = crate::k8s::client(Some(&format!("http://{unreachable}"))).await.unwrap();
        let r = reviewer(client);
        let e = r.node_of_pod(Some("tapio-agent-x1"), "u1").await.unwrap_err();
        assert!(matches!(e, Denial::Unavailable(_)), "{e:?}");
        assert_eq!(r.node_of_pod(None, "u1").await.unwrap(), None, "no pod name: no pod to ask for");
    }

    #[test]
    fn lifetime_comes_from_the_exp_claim() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let left = token_lifetime_left(jwt(now + 600).as_bytes()).unwrap();
        assert!(left < Duration::from_secs(600) && left >= Duration::from_secs(590), "{left:?}");
        assert_eq!(token_lifetime_left(jwt(now - 5).as_bytes()), Some(Duration::ZERO));
        assert_eq!(token_lifetime_left(b"opaque-token"), None);
        assert_eq!(token_lifetime_left(b"a.!!!.c"), None);
    }
}
