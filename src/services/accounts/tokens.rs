//! JWT (HS256) bearer tokens: `sub` is the user, `role = "admin"` unlocks admin routes.
//!
//! The secret comes from `auth.jwt_secret`, else `auth.jwt_secret_file`, else a file
//! generated once in the data dir (mode 0600), so the embedded default works with no
//! setup and no secret ever lives in the repository.

use crate::config::Settings;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
}

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
        }
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
        Ok(Self::from_secret(&secret, auth.token_ttl.as_secs()))
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

    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
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
