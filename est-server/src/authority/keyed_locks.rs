//! One async lock per key (a device, a client address), created on demand.

use std::collections::HashMap;
use std::sync::Arc;

/// Serializes the work done for one key while other keys run in parallel.
#[derive(Default)]
pub struct KeyedLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for `key`'s lock.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Forget the locks nobody holds or waits for.
            if locks.len() > 1024 {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key() {
        let locks = Arc::new(KeyedLocks::default());
        let held = locks.lock("a").await;
        let other_key = locks.lock("b").await;
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move { drop(locks.lock("a").await) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second holder of `a` waits");
        drop(held);
        waiter.await.unwrap();
        drop(other_key);
    }
}
