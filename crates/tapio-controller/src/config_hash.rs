//! The active config: its generation, its `sha256:<hex>` hash and the pre-rendered
//! response body of `GET /v1/agents/config`.
//!
//! The SHA-256 of the canonical bytes is computed here rather than in tapio-wire, which
//! stays limited to serde, serde_json and thiserror.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tapio_wire::{Batching, CompiledConfig, ConfigResponse, WIRE_VERSION};

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_tagged(bytes: &[u8]) -> String {
    tapio_wire::compiled::tagged_sha256(&Sha256::digest(bytes).into())
}

/// The fleet convergence key of a config: tapio-wire's canonical bytes and `sha256:` text,
/// with this crate's SHA-256 (the `tapio` CLI computes it the same way, from the same
/// function in tapio-wire).
pub fn config_hash(config: &CompiledConfig) -> String {
    config.config_hash_with(|bytes| Sha256::digest(bytes).into())
}

/// The config being served, with everything a request needs precomputed.
#[derive(Debug, Clone)]
pub struct ActiveConfig {
    /// Generation.
    pub generation: u32,
    /// Generation, base-10 u32 as a string.
    pub version: String,
    /// `sha256:<hex>`.
    pub hash: String,
    /// `"<hash>"`, the ETag value.
    pub etag: String,
    /// JSON body of the 200 response.
    pub body: Bytes,
    /// The config itself.
    pub config: CompiledConfig,
}

impl ActiveConfig {
    /// Prepares `config` as generation `generation`.
    pub fn new(config: CompiledConfig, generation: u32, batching: Batching) -> Self {
        let hash = config_hash(&config);
        let response = ConfigResponse {
            wire_version: WIRE_VERSION.to_string(),
            version: generation.to_string(),
            config_hash: hash.clone(),
            config,
            batching,
        };
        // Serializing plain structs of strings and integers cannot fail.
        let body = serde_json::to_vec(&response).unwrap_or_default();
        Self {
            generation,
            version: generation.to_string(),
            etag: format!("\"{hash}\""),
            hash,
            body: Bytes::from(body),
            config: response.config,
        }
    }

    /// True when an `If-None-Match` value names the current ETag (or is `*`).
    /// Weak validators (`W/"…"`) compare equal too, as RFC 9110 asks for this header.
    pub fn if_none_match_hits(&self, header: &str) -> bool {
        header.split(',').map(str::trim).any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag == self.etag
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(sha256_tagged(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_tagged(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn hash_tracks_content() {
        let a = CompiledConfig::default();
        let mut b = a.clone();
        assert_eq!(config_hash(&a), config_hash(&b));
        b.storage.latency_warning_ms += 1;
        assert_ne!(config_hash(&a), config_hash(&b));
    }

    #[test]
    fn if_none_match_forms() {
        let c = ActiveConfig::new(CompiledConfig::default(), 1, Batching { send_interval_ms: 1, max_batch_events: 1 });
        assert!(c.if_none_match_hits(&c.etag));
        assert!(c.if_none_match_hits(&format!("\"x\", W/{}", c.etag)));
        assert!(c.if_none_match_hits("*"));
        assert!(!c.if_none_match_hits("\"sha256:00\""));
        assert!(!c.if_none_match_hits(&c.hash)); // unquoted is not the ETag
    }
}
