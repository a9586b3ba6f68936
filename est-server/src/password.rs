//! Argon2 password checks with a fixed memory budget.
//!
//! Argon2 is memory-hard: one check against an OWASP-default hash
//! (`m=19456`) touches 19 MiB. Allocated per check, that memory grows with the
//! number of checks running at once and the allocator keeps it afterwards
//! (32 clients authenticating together took the server past 600 MiB of RSS).
//! [`PasswordChecker`] runs checks one at a time on one block buffer that is
//! allocated once, so argon2 costs the server 19 MiB however many clients
//! authenticate together; `auth::Users` remembers verified credentials, so a
//! client pays for a check once per five minutes.

use std::sync::Mutex;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Largest argon2 memory cost accepted in a stored hash (256 MiB), so a
/// config cannot make one check allocate without bound.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// Checks passwords against argon2 PHC strings on one shared buffer.
#[derive(Default)]
pub struct PasswordChecker {
    blocks: Mutex<Vec<Block>>,
}

impl PasswordChecker {
    /// A checker; its buffer is allocated by the first check.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `check` while holding the buffer, so callers can look again at
    /// what they cached while waiting for it. Blocking: call it from a
    /// blocking thread.
    pub fn exclusive<T>(&self, check: impl FnOnce(&mut Session<'_>) -> T) -> T {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        check(&mut Session {
            blocks: &mut blocks,
        })
    }
}

/// Exclusive use of the checker's buffer.
pub struct Session<'a> {
    blocks: &'a mut Vec<Block>,
}

impl Session<'_> {
    /// Whether `password` matches `phc` (an argon2 PHC string). Malformed or
    /// oversized hashes never match.
    pub fn verify(&mut self, password: &[u8], phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        if params.m_cost() > MAX_MEMORY_KIB {
            return false;
        }
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from).transpose() {
            Ok(version) => version.unwrap_or_default(),
            Err(_) => return false,
        };
        let mut salt_buffer = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buffer) else {
            return false;
        };
        let needed = params.block_count();
        if self.blocks.len() < needed {
            self.blocks.resize(needed, Block::default());
        }
        let mut computed = Zeroizing::new(vec![0u8; expected.len()]);
        let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password,
            salt,
            &mut computed,
            &mut self.blocks[..needed],
        );
        hashed.is_ok() && bool::from(computed.ct_eq(expected.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_what_the_argon2_crate_hashes_and_nothing_else() {
        let phc = crate::auth::hash_password("correct horse").unwrap();
        let checker = PasswordChecker::new();
        checker.exclusive(|session| {
            assert!(session.verify(b"correct horse", &phc));
            assert!(!session.verify(b"correct horsE", &phc));
            assert!(!session.verify(b"correct horse", "not a phc string"));
            assert!(!session.verify(
                b"correct horse",
                "$argon2id$v=19$m=1048576,t=2,p=1$GCvVV0DWUx3pOAfTKA0e9A$wQtVU/+GrF1RjyfhdZpAoNqvBy9LYAj/zKS3fW2G6yY"
            ));
        });
        // The buffer stays allocated for the next check (one check's worth).
        assert_eq!(
            checker.blocks.lock().unwrap().len(),
            Params::DEFAULT_M_COST as usize
        );
    }
}
