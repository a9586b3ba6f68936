//! Who is asking: HTTP Basic users and TLS client certificates.
//!
//! [`Authenticator::authenticate`] turns the credentials of one request into
//! a [`Principal`], or refuses with 401 (no or wrong credentials) or 403
//! (a certificate this server knows but will not accept). What a principal
//! may then do is decided by [`crate::authority::enroll`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use argon2::Argon2;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use der::Decode;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::authority::keyed_locks::KeyedLocks;
use crate::authority::operation::Operation;
use crate::authority::password::{PasswordChecker, Session};
use crate::config::{AuthMethod, LabelConfig, Limits, UserConfig};
use crate::error::EstError;
use crate::registry::{CertState, CertificateRecord, DeviceState, Registry};

/// User name and password from an `Authorization: Basic` header.
pub struct BasicCredentials {
    /// The user name (or device serial).
    pub user: String,
    /// The password, wiped from memory when dropped.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Parses an `Authorization` header value of the Basic scheme (RFC 7617).
pub fn parse_basic(header: &[u8]) -> Result<BasicCredentials, EstError> {
    let malformed =
        || EstError::Unauthorized("the Authorization header is not valid HTTP Basic".into());
    let text = std::str::from_utf8(header).map_err(|_| malformed())?.trim();
    let (scheme, encoded) = text.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(EstError::Unauthorized(format!(
            "authentication scheme `{scheme}` is not supported; use Basic or a client certificate"
        )));
    }
    let decoded = Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| malformed())?);
    let decoded = std::str::from_utf8(&decoded).map_err(|_| malformed())?;
    let (user, password) = decoded.split_once(':').ok_or_else(malformed)?;
    if user.is_empty() {
        return Err(malformed());
    }
    Ok(BasicCredentials {
        user: user.to_owned(),
        password: Zeroizing::new(password.to_owned()),
    })
}

/// Configured Basic users with their argon2 hashes.
pub struct Users {
    hashes: HashMap<String, String>,
    /// Checked for names that are no user (nor a device with the right
    /// token), so their failures take as long as a wrong password: the
    /// costliest configured hash (its result is never taken), else
    /// [`DECOY_HASH`].
    decoy: String,
    /// Argon2 checks on a few buffers, in turns per address (see [`crate::authority::password`]).
    checker: PasswordChecker,
    /// Recently verified credentials, as HMAC-SHA256 under a per-process
    /// random key (never the password), so a client that authenticates on
    /// every request does not pay argon2 each time.
    verified: std::sync::Mutex<HashMap<[u8; 32], std::time::Instant>>,
    cache_key: aws_lc_rs::hmac::Key,
}

/// Checked instead of a real hash for unknown names when no user is
/// configured (the argon2id hash of a constant, default cost).
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$GCvVV0DWUx3pOAfTKA0e9A$wQtVU/+GrF1RjyfhdZpAoNqvBy9LYAj/zKS3fW2G6yY";

/// How long a verified Basic credential is remembered.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);
/// The most credentials remembered at once.
const VERIFIED_MAX: usize = 10_000;

impl Users {
    /// Builds the user table (hashes were checked when the config loaded).
    pub fn new(users: &[UserConfig]) -> Self {
        let hashes: HashMap<String, String> = users
            .iter()
            .map(|u| (u.name.clone(), u.password_hash.clone()))
            .collect();
        let cost = |phc: &str| {
            argon2::PasswordHash::new(phc)
                .ok()
                .and_then(|parsed| argon2::Params::try_from(&parsed).ok())
                .map_or(0, |p| u64::from(p.m_cost()) * u64::from(p.t_cost()))
        };
        let decoy = hashes
            .values()
            .max_by_key(|phc| cost(phc))
            .cloned()
            .unwrap_or_else(|| DECOY_HASH.to_owned());
        let rng = aws_lc_rs::rand::SystemRandom::new();
        Self {
            hashes,
            decoy,
            checker: PasswordChecker::default(),
            verified: std::sync::Mutex::new(HashMap::new()),
            cache_key: aws_lc_rs::hmac::Key::generate(aws_lc_rs::hmac::HMAC_SHA256, &rng)
                .expect("system randomness"),
        }
    }

    /// True when `name` is a configured user.
    pub fn knows(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// True when `credentials` were verified within the last few minutes
    /// (a cache look-up, no argon2).
    pub fn remembers(&self, credentials: &BasicCredentials) -> bool {
        self.recently_verified(&self.credential_fingerprint(credentials))
    }

    /// True when `credentials` name a configured user with the right password.
    /// The argon2 check waits for its turn among `peer`'s and other
    /// addresses' checks (see [`crate::authority::password`]), then runs on a blocking
    /// thread: argon2 is deliberately slow.
    pub async fn verify(
        self: &Arc<Self>,
        credentials: BasicCredentials,
        peer: Option<IpAddr>,
    ) -> bool {
        let fingerprint = self.credential_fingerprint(&credentials);
        if self.recently_verified(&fingerprint) {
            return true;
        }
        let users = self.clone();
        self.check(peer, move |session| {
            // Concurrent requests with the same credentials wait for their
            // turns; the first one's success serves the others, whose turns
            // are not held against their address.
            if users.recently_verified(&fingerprint) {
                session.unused();
                return true;
            }
            let (hash, known) = match users.hashes.get(&credentials.user) {
                Some(hash) => (hash.as_str(), true),
                None => (users.decoy.as_str(), false),
            };
            let verified = session.verify(credentials.password.as_bytes(), hash) && known;
            if verified {
                users.remember(fingerprint);
            }
            verified
        })
        .await
    }

    /// One argon2 check against the decoy hash, as long as a wrong password
    /// takes: what a failed device token costs too, so the time of a
    /// failure does not tell which kind of name was tried.
    pub async fn decoy(&self, password: Zeroizing<String>, peer: Option<IpAddr>) {
        let decoy = self.decoy.clone();
        self.check(peer, move |session| {
            session.verify(password.as_bytes(), &decoy)
        })
        .await;
    }

    /// Runs `check` on one of the checker's buffers, in `peer`'s turn, on a
    /// blocking thread.
    async fn check(
        &self,
        peer: Option<IpAddr>,
        check: impl FnOnce(&mut Session) -> bool + Send + 'static,
    ) -> bool {
        let mut session = self.checker.session(peer).await;
        tokio::task::spawn_blocking(move || check(&mut session))
            .await
            .unwrap_or(false)
    }

    fn credential_fingerprint(&self, credentials: &BasicCredentials) -> [u8; 32] {
        let mut context = aws_lc_rs::hmac::Context::with_key(&self.cache_key);
        context.update(credentials.user.as_bytes());
        context.update(&[0]);
        context.update(credentials.password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(context.sign().as_ref());
        out
    }

    fn recently_verified(&self, fingerprint: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .ok()
            .and_then(|cache| cache.get(fingerprint).map(|at| at.elapsed() < VERIFIED_TTL))
            .unwrap_or(false)
    }

    fn remember(&self, fingerprint: [u8; 32]) {
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_MAX {
                cache.retain(|_, at| at.elapsed() < VERIFIED_TTL);
                if cache.len() >= VERIFIED_MAX {
                    cache.clear();
                }
            }
            cache.insert(fingerprint, std::time::Instant::now());
        }
    }
}

/// Hashes a password as an argon2id PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// A TLS client certificate that passed the handshake's chain check.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// End-entity first, then any intermediates the client sent.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate, parsed.
    pub certificate: Certificate,
    /// SHA-256 of the end-entity DER, hex.
    pub fingerprint: String,
    /// The end-entity serial, lower-case hex (as the registry keys it).
    pub serial: String,
    /// Subject, RFC 4514 text.
    pub subject: String,
}

impl ClientCertificate {
    /// Parses the chain rustls verified.
    pub fn from_chain(chain: Vec<CertificateDer<'static>>) -> Option<Self> {
        let leaf = chain.first()?;
        let certificate = Certificate::from_der(leaf.as_ref()).ok()?;
        Some(Self {
            fingerprint: est_wire::sha256_hex(leaf.as_ref()),
            serial: ca_backends::serial_hex(&certificate),
            subject: certificate.tbs_certificate.subject.to_string(),
            certificate,
            chain,
        })
    }

    /// The subject's common name.
    pub fn common_name(&self) -> Option<String> {
        est_wire::csr::common_name(&self.certificate.tbs_certificate.subject)
    }
}

/// Everything a request brought to prove who it is.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Raw `Authorization` header, if any.
    pub authorization: Option<Vec<u8>>,
    /// The verified TLS client certificate, if any.
    pub client_certificate: Option<ClientCertificate>,
    /// The client's address, for per-address limits.
    pub peer: Option<IpAddr>,
}

/// An authenticated client.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A registered device with its unused one-time token.
    Device {
        /// Device id (serial).
        id: String,
        /// SHA-256 of the token it presented, hex.
        token_hash: String,
    },
    /// A configured Basic user.
    User {
        /// User name.
        name: String,
    },
    /// A certificate from a bootstrap (manufacturer) CA.
    Bootstrap {
        /// The certificate.
        certificate: ClientCertificate,
    },
    /// A current certificate this server issued under another label, used to
    /// authenticate a first enrollment on this one.
    IssuedElsewhere {
        /// The certificate presented.
        certificate: ClientCertificate,
        /// Its registry entry.
        record: Box<CertificateRecord>,
    },
    /// A certificate this server issued under this label and that is still current: a renewal.
    Identity {
        /// The certificate presented.
        certificate: ClientCertificate,
        /// Its registry entry.
        record: Box<CertificateRecord>,
    },
}

impl Principal {
    /// How the principal authenticated, for the registry and logs.
    pub fn describe(&self) -> String {
        match self {
            Principal::User { name } => format!("basic:{name}"),
            Principal::Device { id, .. } => format!("device-token:{id}"),
            Principal::Bootstrap { certificate } => {
                format!("bootstrap-cert:{}", certificate.subject)
            }
            Principal::Identity { record, .. } => {
                format!("identity-cert:{}", record.certificate.serial)
            }
            Principal::IssuedElsewhere { record, .. } => {
                format!("issued-cert:{}", record.certificate.serial)
            }
        }
    }
}

/// Checks credentials against users, bootstrap CAs and the registry.
pub struct Authenticator {
    users: Arc<Users>,
    bootstrap: Option<Arc<dyn ClientCertVerifier>>,
    registry: Arc<dyn Registry>,
    limits: Limits,
    failures: FailureCounter,
    /// Credentials that may turn out wrong are checked one at a time per
    /// client address and per device, so a burst of concurrent guesses cannot
    /// all be judged before the first failure is counted.
    addresses: KeyedLocks,
    devices: KeyedLocks,
}

impl Authenticator {
    /// `bootstrap` verifies chains against the bootstrap trust list only.
    pub fn new(
        users: Arc<Users>,
        bootstrap: Option<Arc<dyn ClientCertVerifier>>,
        registry: Arc<dyn Registry>,
        limits: Limits,
    ) -> Self {
        Self {
            failures: FailureCounter::new(limits.failures_per_minute_per_address),
            addresses: KeyedLocks::default(),
            devices: KeyedLocks::default(),
            users,
            bootstrap,
            registry,
            limits,
        }
    }

    fn is_bootstrap(&self, certificate: &ClientCertificate) -> bool {
        let Some(verifier) = &self.bootstrap else {
            return false;
        };
        let (leaf, intermediates) = certificate.chain.split_first().expect("non-empty chain");
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }

    /// Authenticates one enrollment request on a label.
    pub async fn authenticate(
        &self,
        label_name: &str,
        label: &LabelConfig,
        operation: Operation,
        credentials: Credentials,
    ) -> Result<Principal, EstError> {
        let mut certificate_refusal = None;
        if let Some(certificate) = credentials.client_certificate {
            match self.identity(certificate).await? {
                CertificateKind::Identity(certificate, record) => {
                    if record.state != CertState::Active
                        && (record.certificate.label != label_name
                            || operation == Operation::ServerKeyGen)
                    {
                        return Err(EstError::Forbidden(superseded_reason(&record)));
                    }
                    if record.certificate.label == label_name {
                        return Ok(Principal::Identity {
                            certificate,
                            record,
                        });
                    }
                    if operation == Operation::SimpleReenroll {
                        return Err(EstError::Forbidden(format!(
                            "certificate {} was issued under label `{}`; renew it there",
                            record.certificate.serial, record.certificate.label
                        )));
                    }
                    if label.auth.contains(&AuthMethod::IssuedCert) {
                        return Ok(Principal::IssuedElsewhere {
                            certificate,
                            record,
                        });
                    }
                    certificate_refusal = Some(
                        "certificates issued under another label are not accepted on this label",
                    );
                }
                CertificateKind::Retired(reason) => return Err(EstError::Forbidden(reason)),
                CertificateKind::Other(certificate) => {
                    if operation == Operation::SimpleReenroll {
                        return Err(EstError::Forbidden(format!(
                            "simplereenroll needs a certificate issued by this server; {} is not one",
                            certificate.subject
                        )));
                    }
                    if self.is_bootstrap(&certificate) {
                        if label.auth.contains(&AuthMethod::BootstrapCert) {
                            return Ok(Principal::Bootstrap { certificate });
                        }
                        certificate_refusal =
                            Some("bootstrap certificates are not accepted on this label");
                    } else {
                        certificate_refusal =
                            Some("the client certificate is not from a bootstrap CA");
                    }
                }
            }
        }
        if operation == Operation::SimpleReenroll {
            return Err(EstError::Unauthorized(
                "simplereenroll needs the current certificate as TLS client certificate".into(),
            ));
        }
        let Some(header) = credentials.authorization else {
            return Err(EstError::Unauthorized(
                certificate_refusal
                    .map(|r| format!("{r}; authenticate with HTTP Basic"))
                    .unwrap_or_else(|| "authentication required".into()),
            ));
        };
        let allows_users = label.auth.contains(&AuthMethod::Basic);
        let allows_tokens = label.auth.contains(&AuthMethod::DeviceToken);
        if !allows_users && !allows_tokens {
            return Err(EstError::Unauthorized(
                "HTTP Basic is not accepted on this label".into(),
            ));
        }
        let basic = parse_basic(&header)?;
        let is_token = allows_tokens && !(allows_users && self.users.knows(&basic.user));
        if !is_token && self.users.remembers(&basic) {
            // Verified minutes ago: cannot fail, so it skips the queues below.
            return Ok(Principal::User { name: basic.user });
        }
        let blocked = || {
            self.failures
                .blocked(credentials.peer)
                .map(|retry_after_secs| EstError::TooManyRequests {
                    retry_after_secs,
                    message: "too many failed authentications from this address; wait and retry"
                        .into(),
                })
        };
        if let Some(refusal) = blocked() {
            return Err(refusal);
        }
        let _address = match credentials.peer {
            Some(peer) => Some(self.addresses.lock(&peer.to_string()).await),
            None => None,
        };
        // Again: the failures judged while this request waited count too.
        if let Some(refusal) = blocked() {
            return Err(refusal);
        }
        let outcome = if is_token {
            let _device = self.devices.lock(&basic.user).await;
            self.device_token(label_name, basic, credentials.peer).await
        } else {
            let name = basic.user.clone();
            if self.users.verify(basic, credentials.peer).await {
                Ok(Principal::User { name })
            } else {
                tracing::info!(user = %name, "wrong Basic credentials");
                Err(wrong_credentials(allows_users, allows_tokens))
            }
        };
        if matches!(outcome, Err(EstError::Unauthorized(_))) {
            self.failures.record(credentials.peer);
        }
        // One answer for every wrong name, password or token on this label.
        outcome.map_err(|e| match e {
            EstError::Unauthorized(_) => wrong_credentials(allows_users, allows_tokens),
            e => e,
        })
    }

    /// Checks `serial:token` against the device registry (constant-time on
    /// the hashes). A failure also runs the decoy argon2 check, so it takes
    /// as long as a wrong user password; its error is replaced by the
    /// label's one message.
    async fn device_token(
        &self,
        label_name: &str,
        basic: BasicCredentials,
        peer: Option<IpAddr>,
    ) -> Result<Principal, EstError> {
        let wrong = || EstError::Unauthorized("unknown device or wrong enrollment token".into());
        let Some(device) = self
            .registry
            .device(&basic.user)
            .await
            .map_err(EstError::from)?
        else {
            self.users.decoy(basic.password, peer).await;
            return Err(wrong());
        };
        let presented = est_wire::sha256_hex(basic.password.as_bytes());
        let matches: bool = subtle::ConstantTimeEq::ct_eq(
            presented.as_bytes(),
            device.device.token_hash.as_bytes(),
        )
        .into();
        let now = crate::registry::unix_now();
        let locked_until = device.locked_until.filter(|until| *until > now);
        if !matches {
            tracing::info!(device = %device.device.id, "wrong enrollment token");
            // A locked device answers a wrong token like any other failure
            // (only the right token learns of the lock), so a lock does not
            // tell which serials exist; it counts no further attempts.
            if locked_until.is_some() {
                self.users.decoy(basic.password, peer).await;
                return Err(wrong());
            }
            let (recorded, ()) = tokio::join!(
                self.registry.record_failed_attempt(
                    &device.device.id,
                    self.limits.token_lockout_after,
                    self.limits.token_lockout.as_secs() as i64,
                ),
                self.users.decoy(basic.password, peer),
            );
            recorded.map_err(EstError::internal)?;
            return Err(wrong());
        }
        if let Some(until) = locked_until {
            return Err(EstError::TooManyRequests {
                retry_after_secs: (until - now) as u64,
                message: format!(
                    "device {} is locked after too many wrong tokens",
                    device.device.id
                ),
            });
        }
        if device.device.label != label_name {
            return Err(EstError::Forbidden(format!(
                "device {} enrolls on label `{}`",
                device.device.id, device.device.label
            )));
        }
        match device.state {
            DeviceState::Unused => Ok(Principal::Device {
                id: device.device.id,
                token_hash: presented,
            }),
            DeviceState::Enrolled => Err(EstError::Forbidden(format!(
                "the enrollment token of device {} has already been used",
                device.device.id
            ))),
            DeviceState::Disabled => Err(EstError::Forbidden(format!(
                "device {} is disabled",
                device.device.id
            ))),
        }
    }

    /// The principal for a renewal that arrived outside EST (MQTT
    /// rotation) on behalf of `certificate`: the same checks as a TLS client
    /// certificate on `/simplereenroll` — issued here under `label`, current
    /// (not superseded, revoked or of a disabled device) and valid now.
    pub async fn rotating_identity(
        &self,
        certificate: ClientCertificate,
        label: &str,
    ) -> Result<Principal, EstError> {
        let validity = &certificate.certificate.tbs_certificate.validity;
        let now = std::time::SystemTime::now();
        if validity.not_after.to_system_time() <= now || validity.not_before.to_system_time() > now
        {
            return Err(EstError::Forbidden(format!(
                "certificate {} is not valid now",
                certificate.subject
            )));
        }
        match self.identity(certificate).await? {
            CertificateKind::Identity(certificate, record) if record.certificate.label == label => {
                Ok(Principal::Identity {
                    certificate,
                    record,
                })
            }
            CertificateKind::Identity(_, record) => Err(EstError::Forbidden(format!(
                "certificate {} was issued under label `{}`",
                record.certificate.serial, record.certificate.label
            ))),
            CertificateKind::Retired(reason) => Err(EstError::Forbidden(reason)),
            CertificateKind::Other(certificate) => Err(EstError::Forbidden(format!(
                "{} is not a certificate issued by this server",
                certificate.subject
            ))),
        }
    }

    async fn identity(&self, certificate: ClientCertificate) -> Result<CertificateKind, EstError> {
        let record = self
            .registry
            .find_presented(&certificate.serial, &certificate.fingerprint)
            .await
            .map_err(EstError::from)?;
        if let Some(device_id) = record
            .as_ref()
            .and_then(|r| r.certificate.device_id.clone())
        {
            let device = self
                .registry
                .device(&device_id)
                .await
                .map_err(EstError::from)?;
            if device.is_some_and(|d| d.state == DeviceState::Disabled) {
                return Ok(CertificateKind::Retired(format!(
                    "device {device_id} is disabled"
                )));
            }
        }
        Ok(match record {
            None => CertificateKind::Other(certificate),
            Some(record) => match record.state {
                // Active, or superseded by a successor the device has never
                // used: the enrollment service may then only hand that
                // successor out again (see `CertificateRecord::may_replay_renewal`).
                _ if record.state == CertState::Active || record.may_replay_renewal() => {
                    CertificateKind::Identity(certificate, Box::new(record))
                }
                CertState::Active | CertState::Superseded => {
                    CertificateKind::Retired(superseded_reason(&record))
                }
                CertState::Revoked => CertificateKind::Retired(format!(
                    "certificate {} has been revoked",
                    record.certificate.serial
                )),
            },
        })
    }
}

/// The one answer to a wrong user name, password or device token on a
/// label, whichever of them was wrong, so it does not tell which names exist.
fn wrong_credentials(allows_users: bool, allows_tokens: bool) -> EstError {
    EstError::Unauthorized(
        match (allows_users, allows_tokens) {
            (true, true) => "wrong user name, password or enrollment token",
            (false, true) => "unknown device or wrong enrollment token",
            _ => "wrong user name or password",
        }
        .into(),
    )
}

/// Why a superseded certificate is refused.
pub(crate) fn superseded_reason(record: &CertificateRecord) -> String {
    format!(
        "certificate {} has been superseded by {}; authenticate with the newer certificate",
        record.certificate.serial,
        record.successor.as_deref().unwrap_or("a newer one")
    )
}

/// Counts failed authentications per client address in one-minute windows.
struct FailureCounter {
    per_minute: u32,
    windows: std::sync::Mutex<HashMap<IpAddr, (u32, std::time::Instant)>>,
}

impl FailureCounter {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Seconds left in the window when `peer` used up its failures.
    fn blocked(&self, peer: Option<IpAddr>) -> Option<u64> {
        let peer = peer?;
        let windows = self.windows.lock().ok()?;
        let (count, started) = windows.get(&peer)?;
        let elapsed = started.elapsed().as_secs();
        (*count >= self.per_minute && elapsed < 60).then(|| 60 - elapsed)
    }

    fn record(&self, peer: Option<IpAddr>) {
        let (Some(peer), Ok(mut windows)) = (peer, self.windows.lock()) else {
            return;
        };
        if windows.len() > 100_000 {
            windows.retain(|_, (_, started)| started.elapsed().as_secs() < 60);
        }
        let entry = windows
            .entry(peer)
            .or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed().as_secs() >= 60 {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
    }
}

enum CertificateKind {
    Identity(ClientCertificate, Box<CertificateRecord>),
    Retired(String),
    Other(ClientCertificate),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_headers() {
        let creds = parse_basic(b"Basic ZXN0dXNlcjplc3Rwd2Q=").unwrap();
        assert_eq!(creds.user, "estuser");
        assert_eq!(creds.password.as_str(), "estpwd");
        let creds = parse_basic(b"basic   dTpwOmFzcw==").unwrap();
        assert_eq!(
            (creds.user.as_str(), creds.password.as_str()),
            ("u", "p:ass")
        );
    }

    #[test]
    fn refuses_malformed_basic_headers() {
        for header in [
            &b"Bearer abc"[..],
            b"Basic",
            b"Basic !!!",
            b"Basic bm9jb2xvbg==",
            b"Basic OnBhc3M=",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_basic(header), Err(EstError::Unauthorized(_))),
                "{header:?}"
            );
        }
    }

    #[tokio::test]
    async fn verifies_hashed_passwords() {
        let users = Arc::new(Users::new(&[UserConfig {
            name: "estuser".into(),
            password_hash: hash_password("estpwd").unwrap(),
        }]));
        let creds = |u: &str, p: &str| BasicCredentials {
            user: u.into(),
            password: Zeroizing::new(p.into()),
        };
        assert!(users.verify(creds("estuser", "estpwd"), None).await);
        assert!(!users.verify(creds("estuser", "wrong"), None).await);
        assert!(!users.verify(creds("nobody", "estpwd"), None).await);
        // Remembered: the second check is fast, and a wrong password still fails.
        let started = std::time::Instant::now();
        assert!(users.verify(creds("estuser", "estpwd"), None).await);
        assert!(started.elapsed() < std::time::Duration::from_millis(5));
        assert!(!users.verify(creds("estuser", "estpwd2"), None).await);
    }
}
