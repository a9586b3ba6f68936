//! A CA key inside a PKCS#11 token (SoftHSM2, YubiHSM 2, Luna, CloudHSM…).
//!
//! The key never leaves the token: it is generated there with
//! `CKA_EXTRACTABLE = false`, `CKA_SENSITIVE = true`, and only asked to sign.
//! Signing runs on tokio's blocking pool over a small pool of logged-in
//! sessions (one per concurrent signature, no global lock). When the token
//! goes away, the failing session and the idle ones are dropped, one fresh
//! session is tried, and if that fails too the request gets
//! [`SignerError::Unavailable`] (503); the next request tries again, so the
//! signer recovers by itself once the token is back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::asn1::{ObjectIdentifier, OctetString, UintRef};
use der::{Decode, Encode};
use est_wire::csr::KeyKind;
use est_wire::keys::KeyAlgorithm;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::{Signer, SignerError};
use crate::CaError;

/// `[ca.signer] kind = "pkcs11"`: which module, token and key, and the PIN.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Token label (`CKA_LABEL` of the token), or…
    #[serde(default)]
    pub token_label: Option<String>,
    /// …its serial number.
    #[serde(default)]
    pub token_serial: Option<String>,
    /// Label of the key pair (`CKA_LABEL`), or…
    #[serde(default)]
    pub key_label: Option<String>,
    /// …its `CKA_ID`, hex.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Environment variable holding the user PIN, or…
    #[serde(default)]
    pub pin_env: Option<String>,
    /// …a file holding it (mode 0600 or stricter; trailing newline ignored).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Logged-in sessions kept open: the most signatures made at once.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
}

fn default_sessions() -> usize {
    4
}

impl Pkcs11Config {
    /// The same token with another key label (the root key of `ca init`).
    pub fn with_key_label(&self, label: &str) -> Self {
        Self {
            key_label: Some(label.to_owned()),
            key_id: None,
            ..self.clone()
        }
    }

    fn token_text(&self) -> String {
        match (&self.token_label, &self.token_serial) {
            (Some(label), _) => format!("token `{label}`"),
            (None, Some(serial)) => format!("token serial `{serial}`"),
            (None, None) => "the first token".into(),
        }
    }

    fn key_text(&self) -> String {
        match (&self.key_label, &self.key_id) {
            (Some(label), _) => format!("key `{label}`"),
            (None, Some(id)) => format!("key id {id}"),
            (None, None) => "no key (set key_label or key_id)".into(),
        }
    }

    fn key_template(&self, class: ObjectClass) -> Result<Vec<Attribute>, CaError> {
        let mut template = vec![Attribute::Class(class)];
        match (&self.key_label, &self.key_id) {
            (Some(label), _) => template.push(Attribute::Label(label.as_bytes().to_vec())),
            (None, Some(id)) => template.push(Attribute::Id(hex_bytes(id)?)),
            (None, None) => {
                return Err(CaError::Internal(
                    "[ca.signer]: set key_label or key_id".into(),
                ))
            }
        }
        Ok(template)
    }

    /// Reads the PIN from `pin_env` or `pin_file` (which must not be readable
    /// by group or others). The PIN is never logged.
    fn pin(&self) -> Result<AuthPin, CaError> {
        if let Some(name) = &self.pin_env {
            let pin = std::env::var(name).map_err(|_| {
                CaError::Internal(format!(
                    "[ca.signer]: environment variable {name} is not set"
                ))
            })?;
            return Ok(AuthPin::from(pin));
        }
        if let Some(path) = &self.pin_file {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| CaError::Internal(format!("{}: {e}", path.display())))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(CaError::Internal(format!(
                    "{}: the PIN file must be mode 0600 (it is {:o})",
                    path.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| CaError::Internal(format!("{}: {e}", path.display())))?;
            return Ok(AuthPin::from(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ));
        }
        Err(CaError::Internal(
            "[ca.signer]: set pin_env or pin_file".into(),
        ))
    }
}

/// One loaded PKCS#11 module (a module is initialised once per process),
/// shared by every signer that uses it, and re-initialised when a token
/// cannot be found any more: many modules (SoftHSM2 among them) only see a
/// token that came back after `C_Finalize` + `C_Initialize`.
struct Library {
    module: PathBuf,
    state: Mutex<LibraryState>,
}

struct LibraryState {
    ctx: Option<Pkcs11>,
    generation: u64,
    reinitialised_at: Option<std::time::Instant>,
}

impl Library {
    fn for_module(module: &Path) -> Arc<Library> {
        static LIBRARIES: OnceLock<Mutex<HashMap<PathBuf, Arc<Library>>>> = OnceLock::new();
        let mut libraries = LIBRARIES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        libraries
            .entry(module.to_path_buf())
            .or_insert_with(|| {
                Arc::new(Library {
                    module: module.to_path_buf(),
                    state: Mutex::new(LibraryState {
                        ctx: None,
                        generation: 0,
                        reinitialised_at: None,
                    }),
                })
            })
            .clone()
    }

    /// The initialised module and its generation.
    fn context(&self) -> Result<(Pkcs11, u64), P11Text> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ctx) = &state.ctx {
            return Ok((ctx.clone(), state.generation));
        }
        let ctx = Pkcs11::new(&self.module).map_err(|e| P11Text {
            text: format!("PKCS#11 module {}: {e}", self.module.display()),
            transient: false,
        })?;
        match ctx.initialize(CInitializeArgs::OsThreads) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(P11Text::from_error(
                    &format!("PKCS#11 module {}: C_Initialize", self.module.display()),
                    &e,
                ))
            }
        }
        state.ctx = Some(ctx.clone());
        Ok((ctx, state.generation))
    }

    /// Drops the module's context (finalising it once the last session
    /// using it is gone) so the next use initialises it afresh; at most once
    /// a second, and not again for a generation already replaced.
    fn reinitialise(&self, seen: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let recent = state
            .reinitialised_at
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1));
        if state.generation == seen && !recent {
            state.ctx = None;
            state.generation += 1;
            state.reinitialised_at = Some(std::time::Instant::now());
        }
    }
}

/// A session logged in as the user, on the configured token.
fn login(ctx: &Pkcs11, config: &Pkcs11Config, pin: &AuthPin, rw: bool) -> Result<Session, P11Text> {
    let slot = find_slot(ctx, config)?;
    let session = if rw {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(|e| P11Text::from_error("C_OpenSession", &e))?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(e) => Err(P11Text::from_error(
            &format!("C_Login to {}", config.token_text()),
            &e,
        )),
    }
}

fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<Slot, P11Text> {
    // Token by token: one slot in a bad state must not hide the others.
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| P11Text::from_error("C_GetSlotList", &e))?;
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let matches = match (&config.token_label, &config.token_serial) {
            (Some(label), _) => info.label().trim_end() == label,
            (None, Some(serial)) => info.serial_number().trim_end() == serial,
            (None, None) => true,
        };
        if matches {
            return Ok(slot);
        }
    }
    Err(P11Text {
        text: format!("{} is not present", config.token_text()),
        transient: true,
    })
}

/// A PKCS#11 failure described for the log (no secrets in it) and whether
/// it looks like the token going away rather than a configuration mistake.
struct P11Text {
    text: String,
    transient: bool,
}

impl P11Text {
    fn from_error(what: &str, e: &P11Error) -> Self {
        let transient = matches!(
            e,
            P11Error::Pkcs11(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::DeviceRemoved
                    | RvError::DeviceError
                    | RvError::DeviceMemory
                    | RvError::TokenNotPresent
                    | RvError::TokenNotRecognized
                    | RvError::UserNotLoggedIn
                    | RvError::SlotIdInvalid
                    | RvError::KeyHandleInvalid
                    | RvError::ObjectHandleInvalid
                    | RvError::GeneralError
                    | RvError::FunctionFailed
                    | RvError::CryptokiNotInitialized,
                _
            )
        );
        Self {
            text: format!("{what}: {}", rv_text(e)),
            transient,
        }
    }
}

impl From<P11Text> for CaError {
    fn from(e: P11Text) -> Self {
        CaError::Internal(e.text)
    }
}

fn rv_text(e: &P11Error) -> String {
    match e {
        P11Error::Pkcs11(rv, function) => format!("{rv:?} ({function:?})"),
        other => other.to_string(),
    }
}

/// A logged-in session with the key's handle in it.
struct Pooled {
    session: Session,
    key: ObjectHandle,
    generation: u64,
}

struct Inner {
    config: Pkcs11Config,
    pin: AuthPin,
    library: Arc<Library>,
    kind: KeyKind,
    idle: Mutex<Vec<Pooled>>,
}

impl Inner {
    fn open_session(&self) -> Result<Pooled, P11Text> {
        let (ctx, generation) = self.library.context()?;
        let session = login(&ctx, &self.config, &self.pin, false)?;
        let template = self
            .config
            .key_template(ObjectClass::PRIVATE_KEY)
            .map_err(|e| P11Text {
                text: e.to_string(),
                transient: false,
            })?;
        let key = session
            .find_objects(&template)
            .map_err(|e| P11Text::from_error("C_FindObjects", &e))?
            .into_iter()
            .next()
            .ok_or_else(|| P11Text {
                text: format!(
                    "no private {} in {}",
                    self.config.key_text(),
                    self.config.token_text()
                ),
                transient: false,
            })?;
        Ok(Pooled {
            session,
            key,
            generation,
        })
    }

    fn sign_with(&self, pooled: &Pooled, tbs: &[u8]) -> Result<Vec<u8>, P11Error> {
        match self.kind {
            KeyKind::EcP256 | KeyKind::EcP384 => {
                let (digest_alg, half) = if self.kind == KeyKind::EcP384 {
                    (&aws_lc_rs::digest::SHA384, 48)
                } else {
                    (&aws_lc_rs::digest::SHA256, 32)
                };
                let digest = aws_lc_rs::digest::digest(digest_alg, tbs);
                let raw = pooled
                    .session
                    .sign(&Mechanism::Ecdsa, pooled.key, digest.as_ref())?;
                if raw.len() != 2 * half {
                    return Err(P11Error::InvalidValue);
                }
                ecdsa_der(&raw[..half], &raw[half..]).map_err(|_| P11Error::InvalidValue)
            }
            KeyKind::Rsa { .. } => pooled
                .session
                .sign(&Mechanism::Sha256RsaPkcs, pooled.key, tbs),
        }
    }

    /// Signs on a pooled session. On failure drops every idle session (the
    /// token probably went away) and tries a fresh one; if the token cannot
    /// be found, re-initialises the module and tries once more.
    fn sign_blocking(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut reasons = Vec::new();
        let mut generation = None;
        if let Some(pooled) = taken {
            match self.sign_with(&pooled, tbs) {
                Ok(signature) => {
                    self.give_back(pooled);
                    return Ok(signature);
                }
                Err(e) => {
                    reasons.push(P11Text::from_error("C_Sign", &e).text);
                    generation = Some(pooled.generation);
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
            }
        }
        for attempt in 0..2 {
            match self.open_session() {
                Ok(pooled) => {
                    let signature = self.sign_with(&pooled, tbs).map_err(|e| {
                        reasons.push(P11Text::from_error("C_Sign", &e).text);
                        SignerError::Unavailable(reasons.join("; "))
                    })?;
                    self.give_back(pooled);
                    return Ok(signature);
                }
                Err(e) if e.transient && attempt == 0 => {
                    reasons.push(e.text);
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    let seen = match generation {
                        Some(generation) => generation,
                        None => match self.library.context() {
                            Ok((_, generation)) => generation,
                            Err(_) => continue,
                        },
                    };
                    self.library.reinitialise(seen);
                }
                Err(e) => {
                    let transient = e.transient;
                    reasons.push(e.text);
                    let text = reasons.join("; then ");
                    return Err(if transient {
                        SignerError::Unavailable(text)
                    } else {
                        SignerError::Failed(text)
                    });
                }
            }
        }
        Err(SignerError::Unavailable(reasons.join("; then ")))
    }

    fn give_back(&self, pooled: Pooled) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.config.sessions.max(1) {
            idle.push(pooled);
        }
    }
}

/// A [`Signer`] whose key is in a PKCS#11 token.
pub struct Pkcs11Signer {
    inner: Arc<Inner>,
    public_key: SubjectPublicKeyInfoOwned,
    algorithm: AlgorithmIdentifierOwned,
    permits: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    /// Logs in to the token, finds the key pair and reads its public key.
    /// A wrong PIN, a missing token or key is an error naming what is wrong.
    pub fn open(config: &Pkcs11Config) -> Result<Self, CaError> {
        let pin = config.pin()?;
        let library = Library::for_module(&config.module);
        let (ctx, _) = library.context()?;
        let session = login(&ctx, config, &pin, false)?;
        let public_key = read_public_key(&session, config)?;
        let kind = est_wire::csr::key_kind_of(&public_key)
            .map_err(|e| CaError::Internal(format!("{}: {e}", config.key_text())))?;
        let algorithm = super::signature_algorithm_for(&public_key)?;
        let inner = Inner {
            config: config.clone(),
            pin,
            library,
            kind,
            idle: Mutex::new(Vec::new()),
        };
        drop((session, ctx));
        let first = inner.open_session()?;
        inner.give_back(first);
        Ok(Self {
            inner: Arc::new(inner),
            public_key,
            algorithm,
            permits: Arc::new(tokio::sync::Semaphore::new(config.sessions.max(1))),
        })
    }

    /// Generates a key pair inside the token under the configured label
    /// (refusing if one exists): token object, private, sensitive, not
    /// extractable. Returns the signer for it.
    pub fn generate(config: &Pkcs11Config, algorithm: KeyAlgorithm) -> Result<Self, CaError> {
        let pin = config.pin()?;
        let (ctx, _) = Library::for_module(&config.module).context()?;
        let session = login(&ctx, config, &pin, true)?;
        let existing = session
            .find_objects(&config.key_template(ObjectClass::PRIVATE_KEY)?)
            .map_err(|e| P11Text::from_error("C_FindObjects", &e))?;
        if !existing.is_empty() {
            return Err(CaError::Internal(format!(
                "{} already exists in {}; choose another key_label",
                config.key_text(),
                config.token_text()
            )));
        }
        let id = match &config.key_id {
            Some(id) => hex_bytes(id)?,
            None => crate::x509::time_ordered_serial(std::time::SystemTime::now())?,
        };
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::Id(id.clone()),
        ];
        let mut private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Id(id),
        ];
        if let Some(label) = &config.key_label {
            public.push(Attribute::Label(label.as_bytes().to_vec()));
            private.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        let mechanism = match algorithm {
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let curve = if algorithm == KeyAlgorithm::EcP384 {
                    const_oid::db::rfc5912::SECP_384_R_1
                } else {
                    const_oid::db::rfc5912::SECP_256_R_1
                };
                public.push(Attribute::EcParams(
                    curve
                        .to_der()
                        .map_err(|e| CaError::Internal(e.to_string()))?,
                ));
                Mechanism::EccKeyPairGen
            }
            KeyAlgorithm::Rsa { bits } => {
                public.push(Attribute::ModulusBits((bits as u64).into()));
                public.push(Attribute::PublicExponent(vec![1, 0, 1]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| P11Text::from_error("C_GenerateKeyPair", &e))?;
        tracing::info!(key = %config.key_text(), token = %config.token_text(), "generated a CA key pair in the token");
        drop((session, ctx));
        Self::open(config)
    }
}

#[async_trait::async_trait]
impl Signer for Pkcs11Signer {
    fn public_key_info(&self) -> SubjectPublicKeyInfoOwned {
        self.public_key.clone()
    }

    fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        self.algorithm.clone()
    }

    fn location(&self) -> String {
        format!(
            "pkcs11 {} in {} ({})",
            self.inner.config.key_text(),
            self.inner.config.token_text(),
            self.inner.config.module.display()
        )
    }

    async fn sign(&self, tbs: &[u8]) -> Result<Vec<u8>, SignerError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SignerError::Unavailable("signer closed".into()))?;
        let inner = self.inner.clone();
        let tbs = tbs.to_vec();
        let result = tokio::task::spawn_blocking(move || inner.sign_blocking(&tbs))
            .await
            .map_err(|e| SignerError::Failed(e.to_string()))?;
        if let Err(SignerError::Unavailable(reason)) = &result {
            tracing::warn!(key = %self.location(), %reason, "PKCS#11 signing failed; answering 503");
        }
        result
    }
}

/// The key pair's public key as a `SubjectPublicKeyInfo`, from the token's
/// public key object (EC: `CKA_EC_PARAMS` + `CKA_EC_POINT`; RSA: modulus + exponent).
fn read_public_key(
    session: &Session,
    config: &Pkcs11Config,
) -> Result<SubjectPublicKeyInfoOwned, CaError> {
    let internal = |e: der::Error| CaError::Internal(format!("{}: {e}", config.key_text()));
    let handle = session
        .find_objects(&config.key_template(ObjectClass::PUBLIC_KEY)?)
        .map_err(|e| P11Text::from_error("C_FindObjects", &e))?
        .into_iter()
        .next()
        .ok_or_else(|| {
            CaError::Internal(format!(
                "no {} in {} (no public key object with that label or id)",
                config.key_text(),
                config.token_text()
            ))
        })?;
    let attributes = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .map_err(|e| P11Text::from_error("C_GetAttributeValue", &e))?;
    let mut key_type = None;
    let (mut params, mut point, mut modulus, mut exponent) = (None, None, None, None);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(v) => params = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            Attribute::Modulus(v) => modulus = Some(v),
            Attribute::PublicExponent(v) => exponent = Some(v),
            _ => {}
        }
    }
    let (algorithm, key_bytes) = match (key_type, params, point, modulus, exponent) {
        (Some(KeyType::EC), Some(params), Some(point), _, _) => {
            let curve = ObjectIdentifier::from_der(&params).map_err(internal)?;
            // CKA_EC_POINT is a DER OCTET STRING around the point (some
            // modules give the bare point).
            let point = OctetString::from_der(&point)
                .map(|o| o.into_bytes())
                .unwrap_or(point);
            (
                AlgorithmIdentifierOwned {
                    oid: const_oid::db::rfc5912::ID_EC_PUBLIC_KEY,
                    parameters: Some(der::Any::from(&curve)),
                },
                point,
            )
        }
        (Some(KeyType::RSA), _, _, Some(modulus), Some(exponent)) => {
            let key = RsaPublicKey {
                modulus: UintRef::new(&modulus).map_err(internal)?,
                public_exponent: UintRef::new(&exponent).map_err(internal)?,
            };
            (
                AlgorithmIdentifierOwned {
                    oid: const_oid::db::rfc5912::RSA_ENCRYPTION,
                    parameters: Some(der::Any::null()),
                },
                key.to_der().map_err(internal)?,
            )
        }
        _ => {
            return Err(CaError::Internal(format!(
                "{}: only EC P-256/P-384 and RSA keys are supported",
                config.key_text()
            )))
        }
    };
    Ok(SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: der::asn1::BitString::from_bytes(&key_bytes).map_err(internal)?,
    })
}

/// RFC 8017 `RSAPublicKey`.
#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// RFC 5480 `ECDSA-Sig-Value`.
#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// The DER `ECDSA-Sig-Value` of a raw `r || s` PKCS#11 signature.
fn ecdsa_der(r: &[u8], s: &[u8]) -> der::Result<Vec<u8>> {
    EcdsaSigValue {
        r: UintRef::new(r)?,
        s: UintRef::new(s)?,
    }
    .to_der()
}

fn hex_bytes(text: &str) -> Result<Vec<u8>, CaError> {
    let text = text.trim_start_matches("0x");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap_or("x"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| CaError::Internal(format!("key_id `{text}` is not hex")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_signature_becomes_der_with_leading_zeros_handled() {
        let mut r = [0u8; 32];
        r[0] = 0x80;
        let mut s = [0u8; 32];
        s[31] = 1;
        let der = ecdsa_der(&r, &s).unwrap();
        // SEQUENCE { INTEGER 0x00 0x80…, INTEGER 0x01 }
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
    }
}
