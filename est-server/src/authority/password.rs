//! Argon2 password checks with a fixed memory budget, shared fairly between
//! client addresses.
//!
//! Argon2 is memory-hard: one check against an OWASP-default hash
//! (`m=19456`) touches 19 MiB. Allocated per check, that memory grows with the
//! number of checks running at once and the allocator keeps it afterwards
//! (32 clients authenticating together took the server past 600 MiB of RSS).
//! [`PasswordChecker`] owns a few block buffers (one per CPU but one, at least
//! 1 and at most [`MAX_SLOTS`]), each allocated by its first check and reused
//! after, so argon2 costs the server at most `slots × m_cost` however many
//! clients authenticate together.
//!
//! A check waits for a free buffer in its client address's queue. When a
//! buffer comes free it goes to the waiting address that was served the
//! fewest checks in its current minute (the earliest waiter among equals):
//! round-robin, in which an address with a hundred queued guesses gets one
//! check per round, like an address with one real login, and an address
//! that has not been checking at all goes first. `auth::Users` remembers
//! verified credentials, so a client pays for a check once per five minutes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// Largest argon2 memory cost accepted in a stored hash (256 MiB), so a
/// config cannot make one check allocate without bound.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// Most buffers (checks running at once) a checker uses, whatever the CPU
/// count: 8 × 19 MiB at the default cost.
pub const MAX_SLOTS: usize = 8;

/// How long an address's count of served checks lasts before it restarts.
const USAGE_WINDOW: Duration = Duration::from_secs(60);

/// Idle addresses remembered before the expired ones are forgotten.
const USAGE_MAX: usize = 10_000;

/// Checks passwords against argon2 PHC strings on a few shared buffers.
pub struct PasswordChecker {
    scheduler: Arc<Mutex<Scheduler>>,
}

impl Default for PasswordChecker {
    /// One buffer per CPU but one, at least 1, at most [`MAX_SLOTS`]: a
    /// flood of guesses never takes every core from TLS and signing, and on
    /// a 2-core machine argon2 holds one 19 MiB buffer (fairness comes from
    /// the turns per address, not from the number of buffers).
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cpus.saturating_sub(1).clamp(1, MAX_SLOTS))
    }
}

impl PasswordChecker {
    /// A checker with `slots` buffers (at least one), each allocated by
    /// its first check.
    pub fn new(slots: usize) -> Self {
        Self {
            scheduler: Arc::new(Mutex::new(Scheduler {
                free: (0..slots.max(1)).map(|_| Vec::new()).collect(),
                clients: HashMap::new(),
                queued: HashSet::new(),
                arrivals: 0,
                pruned: Instant::now(),
            })),
        }
    }

    /// Waits for a buffer in `client`'s turn (see the module doc). Holding
    /// the session is holding the buffer; run its checks on a blocking
    /// thread. A waiter that gives up (its future dropped) loses its turn.
    pub async fn session(&self, client: Option<IpAddr>) -> Session {
        let turn = {
            let mut scheduler = lock(&self.scheduler);
            // A buffer is only ever free while nobody waits for one.
            if let Some(blocks) = scheduler.free.pop() {
                scheduler.usage(client).count();
                return Session {
                    blocks,
                    client,
                    home: Some(self.scheduler.clone()),
                };
            }
            let (sender, turn) = oneshot::channel();
            let arrival = scheduler.arrivals;
            scheduler.arrivals += 1;
            scheduler.usage(client).waiters.push_back((arrival, sender));
            scheduler.queued.insert(client);
            turn
        };
        turn.await
            .expect("a waiter leaves its queue only when handed a session")
    }
}

fn lock(scheduler: &Mutex<Scheduler>) -> std::sync::MutexGuard<'_, Scheduler> {
    scheduler.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who waits for which buffer.
struct Scheduler {
    /// Buffers nobody holds; non-empty only while no one waits.
    free: Vec<Vec<Block>>,
    /// Per client address: its waiters and its checks this window.
    clients: HashMap<Option<IpAddr>, Client>,
    /// The addresses with waiters (the ones `next_waiter` looks at).
    queued: HashSet<Option<IpAddr>>,
    /// Arrival counter: the order of waiters among equally served addresses.
    arrivals: u64,
    /// When idle addresses were last forgotten.
    pruned: Instant,
}

#[derive(Default)]
struct Client {
    /// Waiting checks, oldest first, with their arrival numbers.
    waiters: VecDeque<(u64, oneshot::Sender<Session>)>,
    /// Checks served since `window`.
    served: u32,
    window: Option<Instant>,
}

impl Client {
    /// Counts one served check in the current window.
    fn count(&mut self) {
        let expired = self
            .window
            .is_none_or(|start| start.elapsed() >= USAGE_WINDOW);
        if expired {
            self.served = 0;
            self.window = Some(Instant::now());
        }
        self.served += 1;
    }

    /// Checks served in the current window.
    fn recent(&self) -> u32 {
        match self.window {
            Some(start) if start.elapsed() < USAGE_WINDOW => self.served,
            _ => 0,
        }
    }
}

impl Scheduler {
    fn usage(&mut self, client: Option<IpAddr>) -> &mut Client {
        // At most once a second, so a full table costs no scan per check.
        if self.clients.len() >= USAGE_MAX && self.pruned.elapsed() >= Duration::from_secs(1) {
            self.clients
                .retain(|_, c| !c.waiters.is_empty() || c.recent() > 0);
            self.pruned = Instant::now();
        }
        self.clients.entry(client).or_default()
    }

    /// The next waiter to serve and its address: the least-served
    /// address's oldest waiter.
    fn next_waiter(&mut self) -> Option<(Option<IpAddr>, oneshot::Sender<Session>)> {
        let client = *self.queued.iter().min_by_key(|client| {
            let c = &self.clients[*client];
            (c.recent(), c.waiters.front().map_or(u64::MAX, |w| w.0))
        })?;
        let usage = self.clients.get_mut(&client)?;
        usage.count();
        let waiter = usage
            .waiters
            .pop_front()
            .map(|(_, sender)| (client, sender));
        if usage.waiters.is_empty() {
            self.queued.remove(&client);
        }
        waiter
    }
}

/// Passes a buffer to the next waiter that still waits, or frees it.
fn release(home: &Arc<Mutex<Scheduler>>, mut blocks: Vec<Block>) {
    loop {
        let (client, waiter) = {
            let mut scheduler = lock(home);
            match scheduler.next_waiter() {
                Some(next) => next,
                None => {
                    scheduler.free.push(blocks);
                    return;
                }
            }
        };
        // Outside the lock: a session the waiter no longer takes comes back
        // here without running its `Drop`.
        match waiter.send(Session {
            blocks,
            client,
            home: Some(home.clone()),
        }) {
            Ok(()) => return,
            Err(mut refused) => {
                refused.home = None;
                blocks = std::mem::take(&mut refused.blocks);
            }
        }
    }
}

/// The use of one of the checker's buffers; dropping it hands the buffer on.
pub struct Session {
    blocks: Vec<Block>,
    client: Option<IpAddr>,
    home: Option<Arc<Mutex<Scheduler>>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            release(&home, std::mem::take(&mut self.blocks));
        }
    }
}

impl Session {
    /// Takes back the turn this session was counted as, when it ran no
    /// check after all (what it waited for was settled meanwhile, e.g. the
    /// same credentials verified by another request).
    pub fn unused(&mut self) {
        if let Some(home) = &self.home {
            if let Some(usage) = lock(home).clients.get_mut(&self.client) {
                usage.served = usage.served.saturating_sub(1);
            }
        }
    }

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

    fn address(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[tokio::test]
    async fn matches_what_the_argon2_crate_hashes_and_nothing_else() {
        let phc = crate::authority::auth::hash_password("correct horse").unwrap();
        let checker = PasswordChecker::new(1);
        let mut session = checker.session(None).await;
        assert!(session.verify(b"correct horse", &phc));
        assert!(!session.verify(b"correct horsE", &phc));
        assert!(!session.verify(b"correct horse", "not a phc string"));
        assert!(!session.verify(
            b"correct horse",
            "$argon2id$v=19$m=1048576,t=2,p=1$GCvVV0DWUx3pOAfTKA0e9A$wQtVU/+GrF1RjyfhdZpAoNqvBy9LYAj/zKS3fW2G6yY"
        ));
        drop(session);
        // The buffer stays allocated for the next check (one check's worth).
        let scheduler = lock(&checker.scheduler);
        assert_eq!(scheduler.free.len(), 1);
        assert_eq!(scheduler.free[0].len(), Params::DEFAULT_M_COST as usize);
    }

    #[tokio::test]
    async fn waiting_addresses_take_turns() {
        let checker = Arc::new(PasswordChecker::new(1));
        let served = Arc::new(Mutex::new(Vec::new()));
        let held = checker.session(address(9)).await;
        let mut waiters = Vec::new();
        // Three guesses from .1 queue before one login from .2.
        for client in [1, 1, 1, 2] {
            waiters.push(tokio::spawn({
                let (checker, served) = (checker.clone(), served.clone());
                async move {
                    let session = checker.session(address(client)).await;
                    served.lock().unwrap().push(client);
                    drop(session);
                }
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*served.lock().unwrap(), [1, 2, 1, 1]);
        // .3 has not been served this minute, .1 three times: .3 goes first.
        let held = checker.session(address(9)).await;
        let late = tokio::spawn({
            let (checker, served) = (checker.clone(), served.clone());
            async move {
                let _session = checker.session(address(1)).await;
                served.lock().unwrap().push(1);
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let fresh = tokio::spawn({
            let (checker, served) = (checker.clone(), served.clone());
            async move {
                let _session = checker.session(address(3)).await;
                served.lock().unwrap().push(3);
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        late.await.unwrap();
        fresh.await.unwrap();
        assert_eq!(served.lock().unwrap()[4..], [3, 1]);
    }

    #[tokio::test]
    async fn an_unused_turn_is_not_held_against_the_address() {
        let checker = Arc::new(PasswordChecker::new(1));
        checker.session(address(1)).await.unused();
        let held = checker.session(address(9)).await;
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for client in [1, 2] {
            waiters.push(tokio::spawn({
                let (checker, served) = (checker.clone(), served.clone());
                async move {
                    let _session = checker.session(address(client)).await;
                    served.lock().unwrap().push(client);
                }
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        // .1 is even with .2 again, and queued first.
        assert_eq!(*served.lock().unwrap(), [1, 2]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_a_buffer() {
        let checker = Arc::new(PasswordChecker::new(1));
        let held = checker.session(address(1)).await;
        let gave_up = tokio::spawn({
            let checker = checker.clone();
            async move { drop(checker.session(address(2)).await) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(1), checker.session(address(3)));
        assert!(next.await.is_ok(), "the buffer came back");
    }
}
