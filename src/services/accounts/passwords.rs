//! Password hashing with argon2id, kept off the HTTP workers and bounded in parallel.
//!
//! Hashes are PHC strings (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), so each carries
//! its own parameters: raising `users.argon2_*` later still verifies old hashes, and a
//! successful login reports when the stored hash should be redone with the new ones.
//!
//! One hash costs tens of milliseconds of CPU and `argon2_memory_kib` of memory by
//! design. It runs on tokio's blocking pool (an actix worker stuck on it would stall
//! every request on that worker), and a semaphore admits only `max_concurrent_hashes`
//! at once, so a burst of logins queues instead of taking all the memory.
//!
//! [`Passwords::verify`] with no stored hash (unknown email) verifies against a dummy
//! hash made with the same parameters: the answer is "wrong" either way, and it takes
//! as long as for an account that exists, so timing does not tell which emails have one.

use crate::config::UserSettings;
use crate::domain::user::Password;
use crate::error::Cause;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PasswordError {
    /// The hashing pool is gone (shutting down) or the hash could not be computed.
    #[error("password hashing unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// A stored hash that does not parse: the account cannot log in until it is reset.
    #[error("stored password hash is unreadable: {0}")]
    Corrupt(#[source] Cause),
    /// `users.argon2_*` out of argon2's ranges.
    #[error("invalid argon2 parameters: {0}")]
    Config(#[source] Cause),
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Wrong,
    /// Right; `rehash` when the stored hash was made with other parameters than today's.
    Right {
        rehash: bool,
    },
}

#[derive(Clone)]
pub struct Passwords {
    hasher: Argon2<'static>,
    params: Params,
    /// A hash of a random password nobody knows, checked when the email is unknown.
    dummy: Arc<str>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Passwords {
    /// Builds the hasher from `[users]` and makes the dummy hash (one hash of work).
    pub fn new(settings: &UserSettings) -> Result<Self, PasswordError> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| PasswordError::Config(Cause::new(e)))?;
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut unguessable = [0u8; 32];
        rand::rng().fill_bytes(&mut unguessable);
        let dummy = hash_with(&hasher, &hex::encode(unguessable))?;
        let concurrent = match settings.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Ok(Self {
            hasher,
            params,
            dummy: dummy.into(),
            permits: Arc::new(Semaphore::new(concurrent)),
        })
    }

    /// The PHC string to store for a new password.
    pub async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        self.hash_raw(password.expose()).await
    }

    /// A new hash, with today's parameters, of a password that just verified against
    /// its old hash (it may predate today's length rules, and is the user's all the same).
    pub(crate) async fn rehash_verified(&self, password: &str) -> Result<String, PasswordError> {
        self.hash_raw(password).await
    }

    async fn hash_raw(&self, password: &str) -> Result<String, PasswordError> {
        let hasher = self.hasher.clone();
        let password = password.to_owned();
        self.off_worker(move || hash_with(&hasher, &password)).await
    }

    /// Checks `candidate` against the stored hash, or against the dummy hash when there
    /// is none (then always [`Verdict::Wrong`], after the same work).
    pub async fn verify(&self, candidate: &str, stored: Option<&str>) -> Result<Verdict, PasswordError> {
        let hasher = self.hasher.clone();
        let current = self.params.clone();
        let candidate = candidate.to_owned();
        let known = stored.is_some();
        let phc = stored.map_or_else(|| self.dummy.to_string(), str::to_owned);
        self.off_worker(move || {
            let parsed = PasswordHash::new(&phc).map_err(|e| PasswordError::Corrupt(Cause::new(e)))?;
            let matches = hasher.verify_password(candidate.as_bytes(), &parsed).is_ok();
            Ok(match (known, matches) {
                (true, true) => Verdict::Right {
                    rehash: !made_with(&parsed, &current),
                },
                _ => Verdict::Wrong,
            })
        })
        .await
    }

    async fn off_worker<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PasswordError::Unavailable(Cause::new(e)))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| PasswordError::Unavailable(Cause::new(e)))?
    }
}

fn hash_with(hasher: &Argon2<'_>, password: &str) -> Result<String, PasswordError> {
    // 16 random bytes of salt (the PHC recommendation) from the same CSPRNG as the JWT secret.
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Unavailable(Cause::new(e)))?;
    hasher
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Unavailable(Cause::new(e)))
}

/// Whether a stored hash is argon2id with exactly the current parameters.
fn made_with(stored: &PasswordHash<'_>, current: &Params) -> bool {
    stored.algorithm == Algorithm::Argon2id.ident()
        && Params::try_from(stored).is_ok_and(|p| {
            p.m_cost() == current.m_cost() && p.t_cost() == current.t_cost() && p.p_cost() == current.p_cost()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(memory_kib: u32) -> UserSettings {
        UserSettings {
            argon2_memory_kib: memory_kib,
            argon2_iterations: 1,
            argon2_parallelism: 1,
            max_concurrent_hashes: 2,
            dormant_after_days: 180,
            dormancy_sweep_interval: std::time::Duration::from_secs(86_400),
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new(&settings(1024)).unwrap();
        let password = Password::parse("correct horse battery").unwrap();
        let stored = passwords.hash(&password).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        assert_eq!(
            passwords.verify("correct horse battery", Some(&stored)).await.unwrap(),
            Verdict::Right { rehash: false }
        );
        assert_eq!(
            passwords.verify("correct horse batterY", Some(&stored)).await.unwrap(),
            Verdict::Wrong
        );
        // Same password, new salt: a different hash.
        assert_ne!(passwords.hash(&password).await.unwrap(), stored);
    }

    #[tokio::test]
    async fn no_stored_hash_is_always_wrong() {
        let passwords = Passwords::new(&settings(1024)).unwrap();
        assert_eq!(passwords.verify("anything at all", None).await.unwrap(), Verdict::Wrong);
        assert_eq!(passwords.verify("", None).await.unwrap(), Verdict::Wrong);
    }

    #[tokio::test]
    async fn hashes_made_with_older_parameters_still_verify_and_ask_for_a_rehash() {
        let old = Passwords::new(&settings(1024)).unwrap();
        let stored = old
            .hash(&Password::parse("a long enough passphrase").unwrap())
            .await
            .unwrap();
        let new = Passwords::new(&settings(2048)).unwrap();
        assert_eq!(
            new.verify("a long enough passphrase", Some(&stored)).await.unwrap(),
            Verdict::Right { rehash: true }
        );
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_error_not_a_match() {
        let passwords = Passwords::new(&settings(1024)).unwrap();
        assert!(matches!(
            passwords.verify("whatever", Some("not a phc string")).await,
            Err(PasswordError::Corrupt(_))
        ));
    }

    #[test]
    fn parameters_out_of_range_are_a_config_error() {
        assert!(matches!(Passwords::new(&settings(1)), Err(PasswordError::Config(_))));
    }
}
