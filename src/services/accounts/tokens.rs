//! JWT (HS256) bearer tokens: `sub` is the user, `role = "admin"` unlocks admin routes.
//!
//! The secret comes from `auth.jwt_secret`, else `auth.jwt_secret_file`, else a file
//! generated once in the data dir (mode 0600), so the embedded default works with no
//! setup and no secret ever lives in the repository.
//!
//! A token's signature is checked once per process: [`Keys::verify`] remembers the claims of
//! the tokens it verified (a bounded LRU keyed by the whole token), so a client sending the
//! same bearer token on every request pays a hash lookup, not an HMAC and two JSON decodes.
//! Only verified tokens enter it, and a remembered token is still refused once it expired.

use crate::config::Settings;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<String>,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
}

impl Claims {
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }
}

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
    /// The secret of peer-to-peer calls in cluster mode, derived from the JWT secret
    /// (so every node that accepts the same tokens also trusts the same peers).
    peer_secret: String,
    /// Tokens whose signature was checked, with their claims (`None`: cache off).
    verified: Option<Mutex<lru::LruCache<Box<str>, Arc<Claims>>>>,
}

/// Tokens remembered when the settings do not say (tests, `emporium token`).
const DEFAULT_VERIFIED_TOKENS: usize = 1024;

impl Keys {
    pub(crate) fn from_secret(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        Self {
            peer_secret: {
                use sha2::Digest;
                hex::encode(
                    sha2::Sha256::new_with_prefix(b"emporium peer v1\0")
                        .chain_update(secret)
                        .finalize(),
                )
            },
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
            verified: NonZeroUsize::new(DEFAULT_VERIFIED_TOKENS).map(|n| Mutex::new(lru::LruCache::new(n))),
        }
    }

    /// Remembers up to `capacity` verified tokens (0: verifies every token every time).
    pub(crate) fn remembering(mut self, capacity: usize) -> Self {
        self.verified = NonZeroUsize::new(capacity).map(|n| Mutex::new(lru::LruCache::new(n)));
        self
    }

    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let auth = &settings.auth;
        let secret = if !auth.jwt_secret.is_empty() {
            auth.jwt_secret.expose().as_bytes().to_vec()
        } else if let Some(file) = &auth.jwt_secret_file {
            std::fs::read_to_string(file)?.trim().as_bytes().to_vec()
        } else {
            generated_secret(&settings.server.data_dir.join("jwt_secret"))?
        };
        anyhow::ensure!(secret.len() >= 16, "the JWT secret must be at least 16 bytes");
        Ok(Self::from_secret(&secret, auth.token_ttl.as_secs()).remembering(auth.verified_token_cache))
    }

    pub fn issue(&self, sub: &str, admin: bool) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: sub.to_owned(),
            role: admin.then(|| "admin".to_owned()),
            iat: now,
            exp: now + self.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The peer-to-peer secret derived from the JWT secret (`cluster.peer_secret` empty).
    pub(crate) fn derived_peer_secret(&self) -> &str {
        &self.peer_secret
    }

    /// How long an issued token is valid.
    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// The claims of a valid token: signed with this secret and not expired.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, jsonwebtoken::errors::Error> {
        let Some(verified) = &self.verified else {
            return self.decode(token).map(Arc::new);
        };
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        // A poisoned lock only means another request panicked mid-lookup: the map is intact.
        if let Some(claims) = verified.lock().unwrap_or_else(|p| p.into_inner()).get(token) {
            // Past `exp` it goes through the full check again (which applies the leeway
            // and refuses it once that is over too).
            if now <= claims.exp {
                return Ok(claims.clone());
            }
        }
        let claims = Arc::new(self.decode(token)?);
        verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(token.into(), claims.clone());
        Ok(claims)
    }

    fn decode(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims)
    }
}

/// Reads the secret kept in the data dir, creating it (0600) on first use.
fn generated_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(existing.trim().as_bytes().to_vec());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, secret.as_bytes())?;
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_other_secrets() {
        let keys = Keys::from_secret(b"0123456789abcdef0123", 60);
        let token = keys.issue("alice", true).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(claims.is_admin());
        let other = Keys::from_secret(b"another-secret-of-20b", 60);
        assert!(other.verify(&token).is_err());
    }

    #[test]
    fn remembered_tokens_still_expire_and_others_are_still_checked() {
        let keys = Keys::from_secret(b"0123456789abcdef0123", 60);
        let token = keys.issue("alice", false).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, "alice");
        assert_eq!(keys.verify(&token).unwrap().sub, "alice", "answered from memory");
        // The same claims under another signature are a different token: checked, refused.
        let forged = format!("{}x", token);
        assert!(keys.verify(&forged).is_err());
        // A remembered token whose `exp` has passed is not answered from memory: it goes
        // through the full check, which refuses it.
        let expired = Keys::from_secret(b"0123456789abcdef0123", 0);
        let now = chrono::Utc::now().timestamp() as u64;
        let stale = Claims {
            sub: "bob".into(),
            role: None,
            iat: now - 120,
            exp: now - 60,
        };
        let old = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &stale, &expired.encoding).unwrap();
        let cache = keys.verified.as_ref().unwrap();
        cache.lock().unwrap().put(old.as_str().into(), Arc::new(stale));
        assert!(keys.verify(&old).is_err(), "an expired token was answered from memory");
        // With the cache off every token is checked every time, with the same results.
        let uncached = Keys::from_secret(b"0123456789abcdef0123", 60).remembering(0);
        assert_eq!(uncached.verify(&token).unwrap().sub, "alice");
        assert!(uncached.verify(&old).is_err());
    }

    #[test]
    fn generated_secret_is_kept_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_secret");
        let first = generated_secret(&path).unwrap();
        assert_eq!(generated_secret(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
