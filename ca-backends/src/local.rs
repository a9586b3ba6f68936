//! A local certificate authority: a root and an issuing CA kept in files.
//!
//! On first start [`LocalCa::open_or_create`] makes a self-signed root and an
//! issuing CA signed by it (EC P-256 by default), writing each private key to
//! a file created with mode 0600 in a directory created with mode 0700. Later
//! starts load the same files. Device certificates are signed by the issuing
//! CA; `/cacerts` serves issuing CA + root.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use der::{Decode, Encode};
use est_wire::keys::{KeyAlgorithm, SigningKey};
use est_wire::pem;
use flagset::FlagSet;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::KeyUsages;
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::signer::Signer;
pub use crate::x509::StatusUrls;
use crate::x509::{build_and_sign, key_identifier, CertificateSpec};
use crate::{CaBackend, CaError, IssueRequest, IssuedCertificate, Profile};

const ROOT_KEY: &str = "root-ca.key";
/// Root certificate file in a CA directory.
pub const ROOT_CERT: &str = "root-ca.pem";
/// Issuing CA key file of the `file` signer.
pub const ISSUING_KEY: &str = "issuing-ca.key";
/// Issuing CA certificate file in a CA directory.
pub const ISSUING_CERT: &str = "issuing-ca.pem";
/// The issuing CA's CSR, written by `ca csr` for an offline root.
pub const ISSUING_CSR: &str = "issuing-ca.csr";

/// How a new local CA is made (ignored when its files already exist).
#[derive(Debug, Clone)]
pub struct LocalCaOptions {
    /// Key algorithm of both CA keys.
    pub key_algorithm: KeyAlgorithm,
    /// Subject of the root, e.g. `CN=EST Root CA`.
    pub root_subject: String,
    /// Subject of the issuing CA.
    pub issuing_subject: String,
    /// Lifetime of the root.
    pub root_validity: Duration,
    /// Lifetime of the issuing CA.
    pub issuing_validity: Duration,
    /// The issuing CA's pathLenConstraint: 0 for a device CA (nothing it
    /// issues can act as a CA), 1 for a hierarchy that issues subordinate
    /// CAs such as Azure IoT Edge's Edge CA.
    pub issuing_path_len: u8,
}

impl Default for LocalCaOptions {
    fn default() -> Self {
        Self {
            key_algorithm: KeyAlgorithm::EcP256,
            root_subject: "CN=EST Root CA,O=est-server".into(),
            issuing_subject: "CN=EST Issuing CA,O=est-server".into(),
            root_validity: Duration::from_secs(20 * 365 * 24 * 3600),
            issuing_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            issuing_path_len: 0,
        }
    }
}

/// A root + issuing CA pair: certificates in a directory, the issuing key
/// behind a [`Signer`].
pub struct LocalCa {
    dir: PathBuf,
    root: Certificate,
    issuing: Certificate,
    signer: Arc<dyn Signer>,
    issuing_key_id: Vec<u8>,
    status_urls: StatusUrls,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .field("signer", &self.signer.location())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA in `dir` with its key in a file, creating both first if
    /// `dir` holds no CA.
    pub async fn open_or_create(dir: &Path, options: &LocalCaOptions) -> Result<Self, CaError> {
        if !dir.join(ISSUING_CERT).exists() {
            Self::create(dir, options).await?;
        }
        Self::open(dir)
    }

    /// Loads an existing CA from `dir` with its key in `dir`'s key file.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let signer = crate::signer::file::FileSigner::load(&dir.join(ISSUING_KEY))?;
        Self::open_with_signer(dir, Arc::new(signer))
    }

    /// Loads the certificates in `dir` and signs with `signer`, which must
    /// hold the issuing CA certificate's key.
    pub fn open_with_signer(dir: &Path, signer: Arc<dyn Signer>) -> Result<Self, CaError> {
        let issuing_path = dir.join(ISSUING_CERT);
        if !issuing_path.exists() {
            return Err(CaError::Internal(format!(
                "{} does not exist: create the CA with `est-server ca init` (or `ca csr` + `ca import` for an offline root)",
                issuing_path.display()
            )));
        }
        let root = read_certificate(&dir.join(ROOT_CERT))?;
        let issuing = read_certificate(&issuing_path)?;
        check_key_matches(&issuing, &issuing_path, signer.as_ref())?;
        let issuing_key_id = key_identifier(&issuing.tbs_certificate.subject_public_key_info);
        Ok(Self {
            dir: dir.to_path_buf(),
            root,
            issuing,
            signer,
            issuing_key_id,
            status_urls: StatusUrls::default(),
        })
    }

    /// Makes a new CA in `dir` with key files (the `file` signer).
    async fn create(dir: &Path, options: &LocalCaOptions) -> Result<(), CaError> {
        use crate::signer::file::FileSigner;
        create_private_dir(dir)?;
        let generate = || {
            SigningKey::generate(options.key_algorithm)
                .map(|key| FileSigner::new(key, None))
                .map_err(|e| CaError::Internal(e.to_string()))
        };
        let (root_key, issuing_key) = (generate()?, generate()?);
        let (root, issuing) = Self::certify(options, &root_key, &issuing_key).await?;
        write_private(
            &dir.join(ROOT_KEY),
            root_key.key().to_pkcs8_pem().as_bytes(),
        )?;
        write_private(
            &dir.join(ISSUING_KEY),
            issuing_key.key().to_pkcs8_pem().as_bytes(),
        )?;
        Self::install(dir, &root, &issuing)?;
        tracing::info!(dir = %dir.display(), "created local CA");
        Ok(())
    }

    /// Makes a new CA in `dir` whose keys are held by signers (a token):
    /// only the certificates are written.
    pub async fn create_with_signers(
        dir: &Path,
        options: &LocalCaOptions,
        root_key: &dyn Signer,
        issuing_key: &dyn Signer,
    ) -> Result<(), CaError> {
        if dir.join(ISSUING_CERT).exists() {
            return Err(CaError::Internal(format!(
                "{} already holds a CA",
                dir.display()
            )));
        }
        create_private_dir(dir)?;
        let (root, issuing) = Self::certify(options, root_key, issuing_key).await?;
        Self::install(dir, &root, &issuing)?;
        tracing::info!(dir = %dir.display(), root = %root_key.location(), issuing = %issuing_key.location(), "created local CA");
        Ok(())
    }

    /// A self-signed root for `root_key` and an issuing CA for `issuing_key` signed by it.
    async fn certify(
        options: &LocalCaOptions,
        root_key: &dyn Signer,
        issuing_key: &dyn Signer,
    ) -> Result<(Certificate, Certificate), CaError> {
        let now = SystemTime::now();
        let root_name = parse_name(&options.root_subject)?;
        let root = build_and_sign(
            CertificateSpec {
                subject: root_name.clone(),
                public_key: root_key.public_key_info(),
                not_before: now - Duration::from_secs(60),
                not_after: now + options.root_validity,
                key_usage: KeyUsages::KeyCertSign | KeyUsages::CRLSign,
                extended_key_usage: vec![],
                subject_alt_names: vec![],
                ca_path_len: Some(None),
                issuer: &root_name,
                issuer_key_id: None,
                extra_extensions: vec![],
            },
            root_key,
        )
        .await?;
        let root_key_id = key_identifier(&root.tbs_certificate.subject_public_key_info);
        let issuing = build_and_sign(
            CertificateSpec {
                subject: parse_name(&options.issuing_subject)?,
                public_key: issuing_key.public_key_info(),
                not_before: now - Duration::from_secs(60),
                not_after: now + options.issuing_validity.min(options.root_validity),
                key_usage: KeyUsages::KeyCertSign | KeyUsages::CRLSign,
                extended_key_usage: vec![],
                subject_alt_names: vec![],
                ca_path_len: Some(Some(options.issuing_path_len)),
                issuer: &root_name,
                issuer_key_id: Some(&root_key_id),
                extra_extensions: vec![],
            },
            root_key,
        )
        .await?;
        Ok((root, issuing))
    }

    /// Writes the root and then the issuing CA certificate (whose presence marks a complete CA).
    fn install(dir: &Path, root: &Certificate, issuing: &Certificate) -> Result<(), CaError> {
        write_public(
            &dir.join(ROOT_CERT),
            pem::certificate_to_pem(root).as_bytes(),
        )?;
        write_public(
            &dir.join(ISSUING_CERT),
            pem::certificate_to_pem(issuing).as_bytes(),
        )
    }

    /// A PKCS#10 request for the issuing CA, signed by `issuing_key`, for an
    /// offline root to sign. Returns its DER.
    pub async fn issuing_csr(subject: &str, issuing_key: &dyn Signer) -> Result<Vec<u8>, CaError> {
        crate::x509::build_csr(parse_name(subject)?, issuing_key).await
    }

    /// Installs in `dir` an issuing CA certificate that an offline root
    /// signed, after checking that its key is `issuing_key`'s, that it is a
    /// CA, and that `root` (self-signed) signed it.
    pub fn import(
        dir: &Path,
        issuing: &Certificate,
        root: &Certificate,
        issuing_key: &dyn Signer,
    ) -> Result<(), CaError> {
        check_key_matches(issuing, Path::new("the imported certificate"), issuing_key)?;
        crate::x509::check_signed_by(root, root)
            .map_err(|e| CaError::Rejected(format!("the root is not self-signed: {e}")))?;
        crate::x509::check_signed_by(issuing, root).map_err(|e| {
            CaError::Rejected(format!(
                "the issuing CA does not chain to the given root: {e}"
            ))
        })?;
        if !crate::x509::is_ca(issuing) {
            return Err(CaError::Rejected(
                "the imported certificate is not a CA (basicConstraints cA is not true)".into(),
            ));
        }
        create_private_dir(dir)?;
        Self::install(dir, root, issuing)?;
        tracing::info!(dir = %dir.display(), "installed the issuing CA signed by the offline root");
        Ok(())
    }

    /// Writes `urls` (OCSP responder, CRL) into every certificate this CA
    /// issues from now on.
    pub fn with_status_urls(mut self, urls: StatusUrls) -> Self {
        self.status_urls = urls;
        self
    }

    /// Issues a delegated OCSP responder certificate (RFC 6960 §4.2.2.2) for
    /// `key`: EKU id-kp-OCSPSigning, key usage digitalSignature,
    /// id-pkix-ocsp-nocheck, valid from a minute ago for `validity`.
    pub async fn issue_ocsp_responder(
        &self,
        key: &dyn Signer,
        validity: Duration,
    ) -> Result<Certificate, CaError> {
        let now = SystemTime::now();
        let issuing_cn = self
            .issuing
            .tbs_certificate
            .subject
            .to_string()
            .split(',')
            .find_map(|rdn| rdn.trim().strip_prefix("CN=").map(str::to_owned))
            .unwrap_or_else(|| "EST Issuing CA".to_owned());
        let not_after = (now + validity).min(
            self.issuing
                .tbs_certificate
                .validity
                .not_after
                .to_system_time(),
        );
        build_and_sign(
            CertificateSpec {
                subject: parse_name(&format!("CN={issuing_cn} OCSP responder"))?,
                public_key: key.public_key_info(),
                not_before: now - Duration::from_secs(60),
                not_after,
                key_usage: KeyUsages::DigitalSignature.into(),
                extended_key_usage: vec![const_oid::db::rfc5280::ID_KP_OCSP_SIGNING],
                subject_alt_names: vec![],
                ca_path_len: None,
                issuer: &self.issuing.tbs_certificate.subject,
                issuer_key_id: Some(&self.issuing_key_id),
                extra_extensions: vec![crate::x509::ocsp_nocheck()?],
            },
            self.signer.as_ref(),
        )
        .await
    }

    /// Where the issuing key is (for `ca show` and logs).
    pub fn key_location(&self) -> String {
        self.signer.location()
    }

    /// The signer holding the issuing CA's key.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// The self-signed root.
    pub fn root(&self) -> &Certificate {
        &self.root
    }

    /// The CA that signs device certificates.
    pub fn issuing(&self) -> &Certificate {
        &self.issuing
    }

    /// Issuing CA then root, as served by `/cacerts`.
    pub fn chain(&self) -> Vec<Certificate> {
        vec![self.issuing.clone(), self.root.clone()]
    }

    /// A DER CRL signed by the issuing CA, listing `revoked` (hex serial,
    /// revocation time), valid for `lifetime`.
    pub async fn crl(
        &self,
        revoked: &[(String, SystemTime)],
        lifetime: Duration,
    ) -> Result<Vec<u8>, CaError> {
        let entries = revoked
            .iter()
            .map(|(hex, at)| {
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("00"), 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| CaError::Internal(format!("bad serial {hex}")))?;
                Ok((bytes, *at))
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let now = SystemTime::now();
        let number = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let crl = crate::x509::build_crl(
            &self.issuing.tbs_certificate.subject,
            &self.issuing_key_id,
            self.signer.as_ref(),
            &entries,
            number,
            now,
            now + lifetime,
        )
        .await?;
        crl.to_der().map_err(|e| CaError::Internal(e.to_string()))
    }

    /// Issues a certificate for `public_key` under `profile`. `requested_sans`
    /// are filtered by the profile; the subject is taken as given.
    pub async fn issue(
        &self,
        subject: &Name,
        public_key: &SubjectPublicKeyInfoOwned,
        requested_sans: &[GeneralName],
        profile: &Profile,
    ) -> Result<IssuedCertificate, CaError> {
        let now = SystemTime::now();
        let issuer_not_after = self
            .issuing
            .tbs_certificate
            .validity
            .not_after
            .to_system_time();
        let not_after = (now + profile.validity).min(issuer_not_after);
        let not_before = now - profile.backdate;
        let (key_usage, ca_path_len) = if profile.subordinate_ca {
            (
                FlagSet::from(KeyUsages::KeyCertSign)
                    | KeyUsages::CRLSign
                    | KeyUsages::DigitalSignature,
                Some(Some(0)),
            )
        } else {
            let mut flags = FlagSet::<KeyUsages>::default();
            for usage in &profile.key_usage {
                flags |= usage.flag();
            }
            (flags, None)
        };
        let subject_alt_names: Vec<GeneralName> = requested_sans
            .iter()
            .filter(|name| profile.copies(name))
            .cloned()
            .collect();
        let certificate = build_and_sign(
            CertificateSpec {
                subject: subject.clone(),
                public_key: public_key.clone(),
                not_before,
                not_after,
                key_usage,
                extended_key_usage: profile.extended_key_usage_oids(),
                subject_alt_names,
                ca_path_len,
                issuer: &self.issuing.tbs_certificate.subject,
                issuer_key_id: Some(&self.issuing_key_id),
                extra_extensions: self.status_urls.extensions()?,
            },
            self.signer.as_ref(),
        )
        .await?;
        IssuedCertificate::from_certificate(certificate, None)
    }
}

/// A [`LocalCa`] serving one label with one [`Profile`].
#[derive(Debug, Clone)]
pub struct LocalCaBackend {
    ca: Arc<LocalCa>,
    profile: Profile,
}

impl LocalCaBackend {
    /// Serves `ca` with `profile`.
    pub fn new(ca: Arc<LocalCa>, profile: Profile) -> Self {
        Self { ca, profile }
    }
}

#[async_trait::async_trait]
impl CaBackend for LocalCaBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn ca_certs(&self) -> Result<Vec<Certificate>, CaError> {
        Ok(self.ca.chain())
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCertificate, CaError> {
        self.ca
            .issue(
                request.subject,
                request.csr.public_key(),
                request.csr.subject_alt_names(),
                &self.profile,
            )
            .await
    }

    async fn issue_with_generated_key(
        &self,
        request: IssueRequest<'_>,
    ) -> Result<(IssuedCertificate, zeroize::Zeroizing<Vec<u8>>), CaError> {
        // The new key has the same type as the key the CSR was signed with.
        let algorithm = match request.csr.key_kind() {
            est_wire::csr::KeyKind::EcP256 => KeyAlgorithm::EcP256,
            est_wire::csr::KeyKind::EcP384 => KeyAlgorithm::EcP384,
            est_wire::csr::KeyKind::Rsa { bits } => KeyAlgorithm::Rsa {
                bits: match bits {
                    0..=2048 => 2048,
                    2049..=3072 => 3072,
                    _ => 4096,
                },
            },
        };
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(algorithm))
            .await
            .map_err(|e| CaError::Internal(e.to_string()))?
            .map_err(|e| CaError::Internal(e.to_string()))?;
        let issued = self
            .ca
            .issue(
                request.subject,
                &key.public_key_info(),
                request.csr.subject_alt_names(),
                &self.profile,
            )
            .await?;
        Ok((issued, zeroize::Zeroizing::new(key.pkcs8_der().to_vec())))
    }
}

/// Parses an RFC 4514 name such as `CN=EST Root CA,O=Example`.
pub fn parse_name(text: &str) -> Result<Name, CaError> {
    use std::str::FromStr;
    Name::from_str(text).map_err(|e| CaError::Internal(format!("bad subject `{text}`: {e}")))
}

/// Fails unless `signer` holds the key of `certificate` (read from `path`), naming both.
fn check_key_matches(
    certificate: &Certificate,
    path: &Path,
    signer: &dyn Signer,
) -> Result<(), CaError> {
    let in_certificate = &certificate.tbs_certificate.subject_public_key_info;
    let in_signer = signer.public_key_info();
    if *in_certificate != in_signer {
        let fingerprint = |spki: &SubjectPublicKeyInfoOwned| {
            spki.to_der()
                .map(|der| crate::signer::fingerprint(&der))
                .unwrap_or_default()
        };
        return Err(CaError::Internal(format!(
            "the CA key does not match the certificate: {} ({}) has public key SHA-256 {}, but {} has public key SHA-256 {}",
            path.display(),
            certificate.tbs_certificate.subject,
            fingerprint(in_certificate),
            signer.location(),
            fingerprint(&in_signer),
        )));
    }
    Ok(())
}

/// Reads a PEM (or DER) certificate file.
pub fn read_certificate(path: &Path) -> Result<Certificate, CaError> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let (_, der) =
        pem::decode(&bytes).map_err(|e| CaError::Internal(format!("{}: {e}", path.display())))?;
    Certificate::from_der(&der).map_err(|e| CaError::Internal(format!("{}: {e}", path.display())))
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))
}

/// Writes a secret: the file is created with mode 0600 and must not exist yet.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.write_all(bytes).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let mut file = fs::File::create(path).map_err(|e| io_error(path, e))?;
    file.write_all(bytes).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> CaError {
    CaError::Internal(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use est_wire::csr::Csr;
    use std::os::unix::fs::PermissionsExt;

    fn csr(name: &str) -> Csr {
        let path = format!("{}/../est-wire/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        Csr::from_der(&fs::read(path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn creates_keys_0600_and_reloads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = LocalCa::open_or_create(&ca_dir, &LocalCaOptions::default())
            .await
            .unwrap();
        for key in [ROOT_KEY, ISSUING_KEY] {
            let mode = fs::metadata(ca_dir.join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let dir_mode = fs::metadata(&ca_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let again = LocalCa::open_or_create(&ca_dir, &LocalCaOptions::default())
            .await
            .unwrap();
        assert_eq!(again.root(), ca.root());
        assert_eq!(again.issuing(), ca.issuing());
    }

    #[tokio::test]
    async fn profile_decides_extensions_not_the_csr() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(
            LocalCa::open_or_create(dir.path(), &LocalCaOptions::default())
                .await
                .unwrap(),
        );
        let profile = Profile {
            copy_san: vec![crate::profile::SanKind::Dns],
            ..Profile::default()
        };
        let backend = LocalCaBackend::new(ca.clone(), profile);
        let request = csr("p256-ca-request.csr.der");
        let issued = backend
            .issue(IssueRequest {
                subject: request.subject(),
                csr: &request,
                renewal_of: None,
                binding: None,
            })
            .await
            .unwrap();
        let exts = issued.certificate.tbs_certificate.extensions.unwrap();
        let bc = exts
            .iter()
            .find(|e| e.extn_id == const_oid::db::rfc5912::ID_CE_BASIC_CONSTRAINTS)
            .unwrap();
        let bc =
            x509_cert::ext::pkix::BasicConstraints::from_der(bc.extn_value.as_bytes()).unwrap();
        assert!(!bc.ca, "CSR asked for CA:true, profile says no");

        let with_sans = csr("p256.csr.der");
        let issued = backend
            .issue(IssueRequest {
                subject: with_sans.subject(),
                csr: &with_sans,
                renewal_of: None,
                binding: None,
            })
            .await
            .unwrap();
        let exts = issued.certificate.tbs_certificate.extensions.unwrap();
        let san = exts
            .iter()
            .find(|e| e.extn_id == const_oid::db::rfc5912::ID_CE_SUBJECT_ALT_NAME)
            .unwrap();
        let san =
            x509_cert::ext::pkix::SubjectAltName::from_der(san.extn_value.as_bytes()).unwrap();
        assert_eq!(san.0.len(), 1, "only the DNS name is copied");
        assert_eq!(issued.serial_hex.len(), 32);
        assert_eq!(
            issued.certificate.tbs_certificate.issuer,
            ca.issuing().tbs_certificate.subject
        );
    }

    #[tokio::test]
    async fn serials_are_unique_positive_and_in_issue_order() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open_or_create(dir.path(), &LocalCaOptions::default())
            .await
            .unwrap();
        let request = csr("p256.csr.der");
        let mut seen = std::collections::HashSet::new();
        let mut previous_prefix = Vec::new();
        for _ in 0..50 {
            let issued = ca
                .issue(
                    request.subject(),
                    request.public_key(),
                    &[],
                    &Profile::default(),
                )
                .await
                .unwrap();
            let bytes = issued
                .certificate
                .tbs_certificate
                .serial_number
                .as_bytes()
                .to_vec();
            assert_eq!(bytes.len(), 16);
            assert!(bytes[0] & 0x80 == 0 && bytes[0] != 0);
            let prefix = bytes[..6].to_vec();
            assert!(prefix >= previous_prefix, "time prefix never goes back");
            previous_prefix = prefix;
            assert!(seen.insert(bytes));
        }
    }
}
