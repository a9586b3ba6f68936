//! The one enrollment path: authenticate → parse → authorize → (approve) →
//! issue → record.
//!
//! Every way of getting a certificate — `/simpleenroll` with Basic or a
//! bootstrap certificate, `/simplereenroll`, and `/simpleenroll` with a
//! certificate this server issued (how Azure IoT Edge renews) — goes through
//! [`EnrollService::enroll`]. Nothing here knows about HTTP.

use std::sync::Arc;
use std::time::Duration;

use ca_backends::{Binding, CaBackend, IssueRequest, Profile};
use der::{Decode, Encode};
use est_wire::csr::Csr;
use est_wire::names::{certificate_sans, general_names_text, same_names};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::authority::auth::{
    superseded_reason, Authenticator, ClientCertificate, Credentials, Principal,
};
use crate::authority::entitlement::{self, CredentialKind, Identity};
use crate::authority::lineage::{self, RequestKind};
use crate::authority::operation::Operation;
use crate::authority::subject;
use crate::config::{ChannelBinding, LabelConfig};
use crate::error::EstError;
use crate::metrics::Metrics;
use crate::registry::{
    unix_now, unix_seconds, CertState, CertificateRecord, DeviceClaim, DeviceState, NewCertificate,
    PendingRequest, PendingState, Registry, RegistryError,
};

/// How long a device reservation holds before another request may take over.
const RESERVATION_SECS: i64 = 60;
/// The longest pause between retries of a reservation's release.
const RELEASE_PAUSE_MAX: Duration = Duration::from_secs(2);

/// One profile a label offers, with the CA that issues under it.
pub struct Variant {
    /// The profile's name in the config.
    pub profile_name: String,
    /// The profile.
    pub profile: Profile,
    /// The CA that issues under it.
    pub backend: Arc<dyn CaBackend>,
}

/// One configured EST path.
pub struct Label {
    /// The label, or `None` for `/.well-known/est/`.
    pub name: Option<String>,
    /// Its settings.
    pub config: LabelConfig,
    /// The first profile's (what `/cacerts` and the retirement sweep use).
    pub profile: Profile,
    /// The first profile's CA.
    pub backend: Arc<dyn CaBackend>,
    /// Every profile it offers, in configured order (the first is `profile`).
    pub variants: Vec<Variant>,
    /// DER `/csrattrs` body, or `None` for 204.
    pub csrattrs: Option<Vec<u8>>,
}

impl Label {
    /// The label as stored in the registry (`""` for the unlabelled path).
    pub fn registry_name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The profile a request gets: for a CSR that asks for `CA:TRUE`, the
    /// first subordinate-CA profile, else (and where the label has none)
    /// the first end-entity one — so a CA:TRUE request on a device label
    /// is issued as an end entity, as the profile decides.
    pub fn variant_for(&self, wants_ca: bool) -> Result<&Variant, EstError> {
        let wanted = |v: &&Variant| v.profile.subordinate_ca == wants_ca;
        self.variants
            .iter()
            .find(wanted)
            .or_else(|| {
                self.variants
                    .iter()
                    .find(|v| !wants_ca || !v.profile.subordinate_ca)
            })
            .ok_or_else(|| {
                EstError::Forbidden(
                    "this label issues only CA certificates; the CSR must ask for CA:TRUE (basicConstraints in its extension request)".into(),
                )
            })
    }
}

/// An enrollment request, as the transport hands it over.
pub struct EnrollRequest<'a> {
    /// Which path.
    pub label: &'a Label,
    /// `SimpleEnroll`, `SimpleReenroll` or `ServerKeyGen`.
    pub operation: Operation,
    /// What the client authenticated with.
    pub credentials: Credentials,
    /// The request body (base64 PKCS#10).
    pub body: &'a [u8],
    /// The TLS connection's RFC 9266 tls-exporter value, when available.
    pub channel_binding: Option<[u8; 32]>,
}

/// A certificate handed out.
#[derive(Debug)]
pub struct Enrolled {
    /// The certificate.
    pub certificate: Certificate,
    /// Serial, hex.
    pub serial: String,
    /// The backend's id for it (AWS certificate id), or its SHA-256 fingerprint.
    pub certificate_id: String,
    /// The backend's resource name (AWS certificate ARN) of a new certificate, if any.
    pub certificate_arn: Option<String>,
    /// Serial of the certificate it replaces, for renewals.
    pub renewed: Option<String>,
    /// The private key the CA generated (`/serverkeygen` only), PKCS#8 DER.
    pub private_key: Option<Zeroizing<Vec<u8>>>,
}

/// The enrollment service shared by all labels.
pub struct EnrollService {
    authenticator: Authenticator,
    registry: Arc<dyn Registry>,
    metrics: Arc<Metrics>,
    reserved_names: Vec<String>,
}

impl EnrollService {
    /// Builds the service.
    pub fn new(
        authenticator: Authenticator,
        registry: Arc<dyn Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            authenticator,
            registry,
            metrics,
            reserved_names: Vec::new(),
        }
    }

    /// Common names no client may enroll, normalised
    /// (`authority::subject::normalise`): the rotation orchestrator's MQTT
    /// identity (the broker's ACL grants that name every device's topics)
    /// and any configured.
    pub fn with_reserved_names(mut self, names: Vec<String>) -> Self {
        self.reserved_names = names;
        self
    }

    /// Runs one enrollment or renewal from credentials to recorded certificate.
    pub async fn enroll(&self, request: EnrollRequest<'_>) -> Result<Enrolled, EstError> {
        let label = request.label;
        let principal = self
            .authenticator
            .authenticate(
                label.registry_name(),
                &label.config,
                request.operation,
                request.credentials,
            )
            .await?;

        let csr_der = est_wire::body::decode(request.body)?;
        let csr = Csr::from_der(&csr_der)?;
        check_channel_binding(label.config.channel_binding, &csr, request.channel_binding)?;
        self.enroll_as(label, request.operation, principal, csr)
            .await
    }

    /// Renews the certificate `record` from a CSR that arrived outside EST
    /// (the MQTT rotation's `csr_res`), under the same rules as
    /// `/simplereenroll` authenticated by that certificate: same subject and
    /// names, one successor, same thing and policy.
    pub async fn renew_for_rotation(
        &self,
        label: &Label,
        record: CertificateRecord,
        csr: Csr,
    ) -> Result<Enrolled, EstError> {
        let chain = vec![rustls_pki_types::CertificateDer::from(
            record.certificate.der.clone(),
        )];
        let certificate = ClientCertificate::from_chain(chain)
            .ok_or_else(|| EstError::internal("a recorded certificate does not parse"))?;
        let principal = self
            .authenticator
            .rotating_identity(certificate, &record.certificate.label)
            .await?;
        self.enroll_as(label, Operation::SimpleReenroll, principal, csr)
            .await
    }

    /// Everything after authentication: the profile the request gets, the
    /// strict subject, the entitlement, the lineage and what it replaces →
    /// (approve) → issue → record.
    async fn enroll_as(
        &self,
        label: &Label,
        operation: Operation,
        principal: Principal,
        csr: Csr,
    ) -> Result<Enrolled, EstError> {
        let kind = RequestKind::of(&csr);
        let variant = label.variant_for(kind.ca)?;
        let strict = subject::rebuild(csr.subject()).map_err(EstError::BadRequest)?;
        subject::check_names(csr.subject_alt_names()).map_err(EstError::BadRequest)?;
        entitlement::check_reserved(&strict, &self.reserved_names)?;
        let sans: Vec<GeneralName> = csr
            .subject_alt_names()
            .iter()
            .filter(|n| variant.profile.copies(n))
            .cloned()
            .collect();
        let facts = self.identity(&principal, label).await?;
        let lineage_key = lineage::lineage_key(label.registry_name(), &strict.name, &sans, &kind);

        // What the new certificate replaces, if anything.
        let replaces: Option<CertificateRecord> = match &principal {
            Principal::Identity {
                certificate,
                record,
            } if operation == Operation::SimpleReenroll => {
                check_same_identity(&csr, &sans, &certificate.certificate)?;
                if record.state != CertState::Active {
                    return self.replay_renewal(record, &csr).await;
                }
                Some((**record).clone())
            }
            Principal::Identity {
                certificate,
                record,
            }
            | Principal::IssuedElsewhere {
                certificate,
                record,
            } => {
                let own_lineage = record.certificate.lineage.as_deref()
                    == Some(lineage_key.as_str())
                    || lineage::legacy_match(
                        record,
                        &certificate.certificate,
                        label.registry_name(),
                        &strict.name,
                        &sans,
                        &kind,
                    );
                if record.state != CertState::Active {
                    // Superseded, its successor never used: only the retry of
                    // that renewal is answered (the same successor again).
                    if own_lineage {
                        return self.replay_renewal(record, &csr).await;
                    }
                    return Err(EstError::Forbidden(superseded_reason(record)));
                }
                if own_lineage {
                    Some((**record).clone())
                } else {
                    self.live_certificate(&facts.owner, label, &lineage_key, &strict, &sans, &kind)
                        .await?
                }
            }
            Principal::Bootstrap { .. } => {
                self.live_certificate(&facts.owner, label, &lineage_key, &strict, &sans, &kind)
                    .await?
            }
            Principal::Device { .. } | Principal::User { .. } => None,
        };
        entitlement::check(
            &facts.entitlement,
            &label.config,
            variant.profile.subordinate_ca,
            &strict,
            &sans,
            replaces.is_some(),
        )?;

        let pending_id = match (&replaces, label.config.require_approval) {
            (None, true) => match self.approval(label, &csr, &principal).await? {
                Approval::Approved(id) => Some(id),
                Approval::AlreadyIssued(_) if operation == Operation::ServerKeyGen => {
                    return Err(EstError::Forbidden(
                        "this request was already answered with a generated key, which is not kept; send a new request".into(),
                    ))
                }
                Approval::AlreadyIssued(enrolled) => return Ok(*enrolled),
            },
            _ => None,
        };

        let predecessor = replaces.as_ref().map(|r| r.certificate.serial.clone());
        let predecessor_certificate = match &replaces {
            Some(record) => {
                Some(Certificate::from_der(&record.certificate.der).map_err(EstError::internal)?)
            }
            None => None,
        };
        // A device token is reserved before anything is issued, so concurrent
        // replays of one token are refused before they reach the CA.
        let reservation = match &principal {
            Principal::Device { id, token_hash } => Some(self.reserve(id, token_hash).await?),
            _ => None,
        };
        let binding = self.binding(&principal).await?;
        let issue_request = IssueRequest {
            csr: &csr,
            subject: &strict.name,
            renewal_of: predecessor_certificate.as_ref(),
            binding: binding.as_ref(),
        };
        let issued = if operation == Operation::ServerKeyGen {
            variant
                .backend
                .issue_with_generated_key(issue_request)
                .await
                .map(|(issued, key)| (issued, Some(key)))
        } else {
            variant
                .backend
                .issue(issue_request)
                .await
                .map(|i| (i, None))
        };
        let (issued, private_key) = match issued {
            Ok(pair) => pair,
            Err(e) => {
                self.release(&reservation).await;
                self.metrics.backend_error(label.registry_name());
                return Err(e.into());
            }
        };
        if let Some(old) = &predecessor_certificate {
            ensure_same_identity(&issued.certificate, old)?;
        }

        let owner = facts
            .owner
            .clone()
            .unwrap_or_else(|| lineage::certificate_owner(&issued.serial_hex));
        let record = NewCertificate {
            serial: issued.serial_hex.clone(),
            fingerprint: est_wire::sha256_hex(&issued.der),
            label: label.registry_name().to_owned(),
            subject: issued.certificate.tbs_certificate.subject.to_string(),
            san: general_names_text(&certificate_sans(&issued.certificate)),
            not_before: unix_seconds(issued.not_before),
            not_after: unix_seconds(issued.not_after),
            auth: principal.describe(),
            predecessor: predecessor.clone(),
            device_id: facts.device_id.clone(),
            backend_ref: issued.backend_ref.clone(),
            owner: Some(owner),
            // A renewal continues the lineage it replaces (libest's
            // `simplereenroll` copies the old certificate's extensions into
            // its CSR, which would otherwise read as another kind of request).
            lineage: Some(
                replaces
                    .as_ref()
                    .and_then(|r| r.certificate.lineage.clone())
                    .unwrap_or(lineage_key),
            ),
            der: issued.der.clone(),
        };
        let claim = reservation.clone().map(|(device_id, owner)| DeviceClaim {
            device_id,
            owner,
            cert_id: issued.backend_ref.clone(),
        });
        let recorded = self
            .registry
            .record_issued(record, predecessor.clone(), pending_id, claim)
            .await;
        if let Err(e) = recorded {
            // Nothing was recorded, so nothing is delivered, the token stays
            // usable, and a certificate the backend keeps is taken back.
            self.release(&reservation).await;
            if let Some(backend_ref) = &issued.backend_ref {
                if let Err(cleanup) = variant.backend.retire(backend_ref, binding.as_ref()).await {
                    tracing::error!(certificate_id = %backend_ref, error = %cleanup, "compensation failed");
                }
            }
            return Err(match e {
                RegistryError::PredecessorNotActive(serial) => EstError::Forbidden(format!(
                    "certificate {serial} was renewed or revoked by a concurrent request"
                )),
                RegistryError::LineageBusy => EstError::Conflict {
                    retry_after_secs: 1,
                    message:
                        "a concurrent request obtained a certificate of the same kind first; retry"
                            .into(),
                },
                RegistryError::ReservationLost(device) => EstError::Forbidden(format!(
                    "the enrollment of device {device} took too long and was taken over; retry"
                )),
                other => other.into(),
            });
        }
        tracing::info!(
            serial = %issued.serial_hex,
            subject = %issued.certificate.tbs_certificate.subject,
            label = label.registry_name(),
            profile = %variant.profile_name,
            kind = %kind.describe(),
            auth = %principal.describe(),
            renewed = predecessor.as_deref().unwrap_or("-"),
            "issued certificate"
        );
        Ok(Enrolled {
            certificate_id: issued
                .backend_ref
                .clone()
                .unwrap_or_else(|| est_wire::sha256_hex(&issued.der)),
            certificate_arn: issued.backend_arn.clone(),
            certificate: issued.certificate,
            serial: issued.serial_hex,
            renewed: predecessor,
            private_key,
        })
    }

    /// The live certificate of a lineage: the one recorded as such, or one
    /// of the owner's device's certificates recorded before lineages that
    /// matches it (same label, subject, names and key kind).
    async fn live_certificate(
        &self,
        owner: &Option<String>,
        label: &Label,
        lineage_key: &str,
        strict: &subject::StrictSubject,
        sans: &[GeneralName],
        kind: &RequestKind,
    ) -> Result<Option<CertificateRecord>, EstError> {
        let Some(owner) = owner else {
            return Ok(None);
        };
        if let Some(live) = self
            .registry
            .live_in_lineage(owner, lineage_key)
            .await
            .map_err(EstError::from)?
        {
            return Ok(Some(live));
        }
        let Some(device) = lineage::owner_device(owner) else {
            return Ok(None);
        };
        for record in self
            .registry
            .device_certificates(device)
            .await
            .map_err(EstError::from)?
        {
            if record.state != CertState::Active || record.certificate.lineage.is_some() {
                continue;
            }
            let Ok(certificate) = Certificate::from_der(&record.certificate.der) else {
                continue;
            };
            if lineage::legacy_match(
                &record,
                &certificate,
                label.registry_name(),
                &strict.name,
                sans,
                kind,
            ) {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// The identity behind a principal: its owner (lineage scope), device and
    /// what it is entitled to.
    async fn identity(&self, principal: &Principal, label: &Label) -> Result<Facts, EstError> {
        let device =
            |id: String| async move { self.registry.device(&id).await.map_err(EstError::from) };
        Ok(match principal {
            Principal::Device { id, .. } => Facts {
                owner: Some(lineage::device_owner(id)),
                device_id: Some(id.clone()),
                entitlement: Identity {
                    credential: CredentialKind::DeviceToken,
                    name: id.clone(),
                    describe: format!("device {id}"),
                    may_obtain_ca: false,
                    allowed_sans: Some(Vec::new()),
                },
            },
            Principal::User { name } => Facts {
                owner: None,
                device_id: None,
                entitlement: Identity {
                    credential: CredentialKind::User,
                    name: name.clone(),
                    describe: format!("user {name}"),
                    may_obtain_ca: label.config.subordinate_ca_users.contains(name),
                    allowed_sans: None,
                },
            },
            Principal::Bootstrap { certificate } => {
                let cn = certificate.common_name().ok_or_else(|| {
                    EstError::Forbidden(format!(
                        "the bootstrap certificate {} has no common name to identify its device",
                        certificate.subject
                    ))
                })?;
                let registered = device(cn.clone()).await?;
                if registered
                    .as_ref()
                    .is_some_and(|d| d.state == DeviceState::Disabled)
                {
                    return Err(EstError::Forbidden(format!("device {cn} is disabled")));
                }
                Facts {
                    owner: Some(lineage::device_owner(&cn)),
                    device_id: registered.as_ref().map(|d| d.device.id.clone()),
                    entitlement: Identity {
                        credential: CredentialKind::Bootstrap,
                        describe: format!("the bootstrap certificate of {cn}"),
                        may_obtain_ca: registered.is_some_and(|d| d.device.edge_ca),
                        name: cn,
                        allowed_sans: Some(Vec::new()),
                    },
                }
            }
            Principal::Identity {
                certificate,
                record,
            }
            | Principal::IssuedElsewhere {
                certificate,
                record,
            } => {
                let owner = lineage::owner_of(record);
                let name = lineage::owner_device(&owner)
                    .map(str::to_owned)
                    .or_else(|| certificate.common_name())
                    .unwrap_or_default();
                // The device behind it: recorded, or registered after a
                // bootstrap certificate started the identity.
                let device_id = record
                    .certificate
                    .device_id
                    .clone()
                    .or_else(|| lineage::owner_device(&owner).map(str::to_owned));
                let registered = match &device_id {
                    Some(id) => device(id.clone()).await?,
                    None => None,
                };
                if let Some(d) = registered
                    .as_ref()
                    .filter(|d| d.state == DeviceState::Disabled)
                {
                    return Err(EstError::Forbidden(format!(
                        "device {} is disabled",
                        d.device.id
                    )));
                }
                let may_obtain_ca = registered.as_ref().is_some_and(|d| d.device.edge_ca);
                Facts {
                    owner: Some(owner),
                    device_id: registered.map(|d| d.device.id),
                    entitlement: Identity {
                        credential: CredentialKind::IssuedCertificate,
                        describe: format!("certificate {}", record.certificate.serial),
                        name,
                        may_obtain_ca,
                        allowed_sans: Some(certificate_sans(&certificate.certificate)),
                    },
                }
            }
        })
    }

    /// Answers a renewal by a superseded certificate whose successor was
    /// never used (the first response was lost) with that same successor,
    /// when the CSR carries the successor's key. Anything else is refused as
    /// a renewal of a superseded certificate.
    async fn replay_renewal(
        &self,
        record: &CertificateRecord,
        csr: &Csr,
    ) -> Result<Enrolled, EstError> {
        let refused = || EstError::Forbidden(superseded_reason(record));
        let Some(successor_serial) = &record.successor else {
            return Err(refused());
        };
        let successor = self
            .registry
            .find_by_serial(successor_serial)
            .await
            .map_err(EstError::from)?
            .filter(|s| s.state == CertState::Active)
            .ok_or_else(refused)?;
        let certificate =
            Certificate::from_der(&successor.certificate.der).map_err(EstError::internal)?;
        if certificate.tbs_certificate.subject_public_key_info != *csr.public_key() {
            return Err(refused());
        }
        tracing::info!(
            serial = %successor.certificate.serial,
            renewed = %record.certificate.serial,
            "renewal retried after a lost response; same certificate sent again"
        );
        Ok(Enrolled {
            certificate_id: successor
                .certificate
                .backend_ref
                .clone()
                .unwrap_or_else(|| successor.certificate.fingerprint.clone()),
            certificate_arn: None,
            certificate,
            serial: successor.certificate.serial.clone(),
            renewed: Some(record.certificate.serial.clone()),
            private_key: None,
        })
    }

    /// Where the certificate goes in the backend: the device's thing and policy
    /// from the registry (for token enrollments and renewals of device
    /// certificates); `None` lets the backend use the CSR's CN.
    async fn binding(&self, principal: &Principal) -> Result<Option<Binding>, EstError> {
        let device_id = match principal {
            Principal::Device { id, .. } => Some(id.clone()),
            Principal::Identity { record, .. } => record.certificate.device_id.clone(),
            _ => None,
        };
        let Some(device_id) = device_id else {
            return Ok(None);
        };
        let device = self
            .registry
            .device(&device_id)
            .await
            .map_err(EstError::from)?;
        Ok(device.map(|d| Binding {
            thing_name: d.device.thing_name.unwrap_or(d.device.id),
            policy: d.device.policy,
        }))
    }

    /// Reserves a device's one-time token for this request.
    async fn reserve(&self, id: &str, token_hash: &str) -> Result<(String, String), EstError> {
        let mut owner = [0u8; 16];
        aws_lc_rs::rand::fill(&mut owner).map_err(|_| EstError::internal("no randomness"))?;
        let owner = hex::encode(owner);
        let lease_until = unix_now() + RESERVATION_SECS;
        match self
            .registry
            .reserve_device(id, token_hash, &owner, lease_until)
            .await
        {
            Ok(()) => Ok((id.to_owned(), owner)),
            Err(RegistryError::TokenUsed(id)) => Err(EstError::Forbidden(format!(
                "the enrollment token of device {id} has already been used"
            ))),
            Err(RegistryError::DeviceBusy(id)) => Err(EstError::Conflict {
                retry_after_secs: 5,
                message: format!("device {id} is being enrolled by another request; retry shortly"),
            }),
            Err(RegistryError::DeviceDisabled(id)) => {
                Err(EstError::Forbidden(format!("device {id} is disabled")))
            }
            Err(RegistryError::NotFound(_)) => Err(EstError::Unauthorized(
                "unknown device or wrong enrollment token".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives a reservation back after a failure, leaving the token usable.
    /// When the registry cannot be reached (the failure was often that), the
    /// release is retried in the background until it is back or the
    /// reservation has lapsed anyway, so the device's retry is not answered
    /// 409 for the rest of the lease.
    async fn release(&self, reservation: &Option<(String, String)>) {
        let Some((id, owner)) = reservation else {
            return;
        };
        let Err(e) = self.registry.release_device(id, owner).await else {
            return;
        };
        tracing::warn!(device = %id, error = %e, "could not release reservation; retrying in the background");
        let (registry, id, owner) = (self.registry.clone(), id.clone(), owner.clone());
        tokio::spawn(async move {
            let give_up =
                tokio::time::Instant::now() + Duration::from_secs(RESERVATION_SECS as u64);
            let mut pause = Duration::from_millis(250);
            while tokio::time::Instant::now() + pause < give_up {
                tokio::time::sleep(pause).await;
                let release = registry.release_device(&id, &owner);
                if let Ok(Ok(())) = tokio::time::timeout(RELEASE_PAUSE_MAX * 2, release).await {
                    tracing::info!(device = %id, "reservation released");
                    return;
                }
                pause = (pause * 2).min(RELEASE_PAUSE_MAX);
            }
            tracing::warn!(device = %id, "could not release reservation; it expires by itself");
        });
    }

    async fn approval(
        &self,
        label: &Label,
        csr: &Csr,
        principal: &Principal,
    ) -> Result<Approval, EstError> {
        // Label + subject + key: a retry with a fresh channel binding keeps its id.
        let mut id_input = label.registry_name().as_bytes().to_vec();
        id_input.push(b'\n');
        id_input.extend_from_slice(&csr.subject().to_der().map_err(EstError::internal)?);
        id_input.extend_from_slice(&csr.public_key().to_der().map_err(EstError::internal)?);
        let id = est_wire::sha256_hex(&id_input);
        let pending = |message: &str| EstError::Pending {
            retry_after_secs: label.config.retry_after.as_secs().max(1),
            message: message.to_owned(),
        };
        let existing = self.registry.pending(&id).await.map_err(EstError::from)?;
        match existing {
            None => {
                self.registry
                    .add_pending(PendingRequest {
                        id: id.clone(),
                        label: label.registry_name().to_owned(),
                        subject: csr.subject().to_string(),
                        requested_by: principal.describe(),
                        state: PendingState::Pending,
                        created_at: unix_now(),
                        issued_serial: None,
                    })
                    .await
                    .map_err(EstError::internal)?;
                tracing::info!(pending = %id, subject = %csr.subject(), "enrollment held for approval");
                Err(pending(&format!(
                    "the request is waiting for an operator's approval (id {id})"
                )))
            }
            Some(request) => match request.state {
                PendingState::Pending => Err(pending(&format!(
                    "the request is still waiting for an operator's approval (id {id})"
                ))),
                PendingState::Rejected => Err(EstError::Forbidden(format!(
                    "an operator rejected this request (id {id})"
                ))),
                PendingState::Approved => Ok(Approval::Approved(id)),
                PendingState::Issued => {
                    let serial = request.issued_serial.unwrap_or_default();
                    let record = self
                        .registry
                        .find_by_serial(&serial)
                        .await
                        .map_err(EstError::from)?
                        .ok_or_else(|| {
                            EstError::internal(format!("issued serial {serial} missing"))
                        })?;
                    let certificate = est_wire::pem::certificate_from_der(&record.certificate.der)
                        .map_err(EstError::internal)?;
                    Ok(Approval::AlreadyIssued(Box::new(Enrolled {
                        certificate_id: record.certificate.fingerprint.clone(),
                        certificate_arn: None,
                        certificate,
                        serial,
                        renewed: None,
                        private_key: None,
                    })))
                }
            },
        }
    }
}

enum Approval {
    Approved(String),
    AlreadyIssued(Box<Enrolled>),
}

/// What the enrollment path knows of the identity behind a request.
struct Facts {
    /// Lineage scope; `None` for a Basic user (the new certificate starts
    /// an identity of its own, named after its serial).
    owner: Option<String>,
    /// The registered device the certificate belongs to.
    device_id: Option<String>,
    /// What it may obtain.
    entitlement: Identity,
}

/// `/simplereenroll` keeps the subject and SubjectAltNames of the
/// certificate being renewed (RFC 7030 §4.2.2).
fn check_same_identity(
    csr: &Csr,
    requested: &[GeneralName],
    old: &Certificate,
) -> Result<(), EstError> {
    if !same_subject(csr.subject(), &old.tbs_certificate.subject) {
        return Err(EstError::Forbidden(format!(
            "the CSR subject `{}` differs from the certificate being renewed (`{}`); RFC 7030 §4.2.2 requires the same subject",
            csr.subject(),
            old.tbs_certificate.subject
        )));
    }
    let current = certificate_sans(old);
    if !same_names(requested, &current) {
        return Err(EstError::Forbidden(format!(
            "the CSR subjectAltName [{}] differs from the certificate being renewed [{}]; RFC 7030 §4.2.2 requires the same names",
            general_names_text(requested),
            general_names_text(&current)
        )));
    }
    Ok(())
}

/// Proof-of-possession linking: the CSR's challengePassword must be base64 of
/// the connection's tls-exporter channel binding (RFC 7030 §3.5, RFC 9266).
fn check_channel_binding(
    mode: ChannelBinding,
    csr: &Csr,
    binding: Option<[u8; 32]>,
) -> Result<(), EstError> {
    use base64::Engine;
    let presented = csr.challenge_password();
    match (mode, presented) {
        (ChannelBinding::Off, _) | (ChannelBinding::Verify, None) => Ok(()),
        (ChannelBinding::Require, None) => Err(EstError::BadRequest(
            "this label requires the CSR's challengePassword to carry the TLS channel binding (base64 of the RFC 9266 tls-exporter value)".into(),
        )),
        (_, Some(value)) => {
            let expected = binding
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                .ok_or_else(|| EstError::internal("no channel binding for this connection"))?;
            let matches: bool = subtle::ConstantTimeEq::ct_eq(value.as_bytes(), expected.as_bytes()).into();
            if matches {
                Ok(())
            } else {
                Err(EstError::BadRequest(
                    "the CSR's challengePassword does not match this TLS connection's channel binding (RFC 9266 tls-exporter); build the CSR on the connection that sends it".into(),
                ))
            }
        }
    }
}

/// Subjects match when their DER is identical or, failing that, their RFC 4514
/// text is (a client may re-encode PrintableString as UTF8String).
fn same_subject(a: &x509_cert::name::Name, b: &x509_cert::name::Name) -> bool {
    a.to_der().ok() == b.to_der().ok() || a.to_string() == b.to_string()
}

/// A renewal must produce the same identity the predecessor had.
fn ensure_same_identity(new: &Certificate, old: &Certificate) -> Result<(), EstError> {
    let same = same_subject(&new.tbs_certificate.subject, &old.tbs_certificate.subject)
        && same_names(&certificate_sans(new), &certificate_sans(old));
    if same {
        Ok(())
    } else {
        Err(EstError::internal(
            "backend issued a successor whose identity differs from its predecessor",
        ))
    }
}
