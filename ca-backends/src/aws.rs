//! AWS IoT Core as the CA (aws-sdk-iot).
//!
//! Enrollment: `CreateCertificateFromCsr(setAsActive)`, then `CreateThing`
//! (when absent), `AttachPolicy` and `AttachThingPrincipal`. If anything after
//! the certificate's creation fails, the certificate is deactivated, detached
//! and deleted before the error is returned, so nothing is left orphaned.
//! Server-side key generation uses `CreateKeysAndCertificate`. Retirement
//! (`UpdateCertificate INACTIVE`, `DetachPolicy`, `DetachThingPrincipal`,
//! `DeleteCertificate`) runs when a predecessor is proven obsolete.
//! Throttling and transient faults are retried by the SDK's standard retry
//! strategy with backoff, within a bounded number of attempts and time.

use std::time::Duration;

use aws_sdk_iot::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iot::types::CertificateStatus;
use aws_sdk_iot::Client;
use der::Decode;
use est_wire::keys::SigningKey;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::{Binding, CaBackend, CaError, IssueRequest, IssuedCertificate};

/// How to reach AWS IoT for one label.
#[derive(Debug, Clone, Default)]
pub struct AwsIotOptions {
    /// AWS region (default: the SDK's resolution from the environment).
    pub region: Option<String>,
    /// Endpoint override (a local emulator in tests).
    pub endpoint_url: Option<String>,
    /// Policy attached to every certificate of the label (a device's own overrides it).
    pub policy: Option<String>,
    /// What `/cacerts` serves for the label (the chain devices should trust).
    pub ca_bundle: Vec<Certificate>,
    /// Most attempts per API call (throttling, 5xx, timeouts).
    pub max_attempts: u32,
    /// Time limit per API call, retries included.
    pub operation_timeout: Duration,
}

/// The AWS IoT backend for one label.
#[derive(Debug, Clone)]
pub struct AwsIotBackend {
    client: Client,
    policy: Option<String>,
    ca_bundle: Vec<Certificate>,
}

impl AwsIotBackend {
    /// Builds the client from the environment's credentials and the options.
    pub async fn new(options: AwsIotOptions) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(options.max_attempts.max(1)),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(options.operation_timeout)
                    .build(),
            );
        if let Some(region) = options.region {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(url) = options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Self {
            client: Client::new(&config),
            policy: options.policy,
            ca_bundle: options.ca_bundle,
        }
    }

    /// Binds a fresh certificate to its thing and policy; on failure, removes it.
    async fn bind_or_discard(
        &self,
        certificate_id: &str,
        certificate_arn: &str,
        binding: &Binding,
    ) -> Result<(), CaError> {
        if let Err(e) = self.bind(certificate_arn, binding).await {
            tracing::warn!(certificate_id, error = %e, "binding failed; deleting the new AWS certificate");
            if let Err(cleanup) = self.retire(certificate_id, Some(binding)).await {
                tracing::error!(certificate_id, error = %cleanup, "compensation failed: certificate left behind");
            }
            return Err(e);
        }
        Ok(())
    }

    /// `DescribeCertificate`: the certificate with this id and its status
    /// (`ACTIVE`, `INACTIVE`, …), or `None` when AWS IoT has no such certificate.
    pub async fn describe(
        &self,
        certificate_id: &str,
    ) -> Result<Option<(IssuedCertificate, String)>, CaError> {
        let described = match self
            .client
            .describe_certificate()
            .certificate_id(certificate_id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(map_err("DescribeCertificate", e)),
        };
        let Some(description) = described.certificate_description() else {
            return Ok(None);
        };
        let issued = issued_from_pem(
            description.certificate_pem().unwrap_or_default(),
            certificate_id,
            description.certificate_arn().unwrap_or_default(),
        )?;
        let status = description
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        Ok(Some((issued, status)))
    }

    async fn bind(&self, certificate_arn: &str, binding: &Binding) -> Result<(), CaError> {
        fault_injection("after-create")?;
        match self
            .client
            .create_thing()
            .thing_name(&binding.thing_name)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => {}
            Err(e) => return Err(map_err("CreateThing", e)),
        }
        if let Some(policy) = binding.policy.as_ref().or(self.policy.as_ref()) {
            self.client
                .attach_policy()
                .policy_name(policy)
                .target(certificate_arn)
                .send()
                .await
                .map_err(|e| map_err("AttachPolicy", e))?;
        }
        self.client
            .attach_thing_principal()
            .thing_name(&binding.thing_name)
            .principal(certificate_arn)
            .send()
            .await
            .map_err(|e| map_err("AttachThingPrincipal", e))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl CaBackend for AwsIotBackend {
    fn kind(&self) -> &'static str {
        "aws-iot"
    }

    async fn ca_certs(&self) -> Result<Vec<Certificate>, CaError> {
        Ok(self.ca_bundle.clone())
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCertificate, CaError> {
        let binding = binding_for(&request)?;
        if request.subject != request.csr.subject() {
            return Err(CaError::Rejected(
                "AWS IoT certifies the CSR's subject as sent, and this one needs re-encoding: send each subject attribute as UTF8String or PrintableString".into(),
            ));
        }
        let csr_pem = est_wire::pem::encode("CERTIFICATE REQUEST", request.csr.der());
        let created = self
            .client
            .create_certificate_from_csr()
            .certificate_signing_request(csr_pem)
            .set_as_active(true)
            .send()
            .await
            .map_err(|e| map_err("CreateCertificateFromCsr", e))?;
        let id = created.certificate_id().unwrap_or_default().to_owned();
        let arn = created.certificate_arn().unwrap_or_default().to_owned();
        let pem = created.certificate_pem().unwrap_or_default().to_owned();
        self.bind_or_discard(&id, &arn, &binding).await?;
        match issued_from_pem(&pem, &id, &arn) {
            Ok(issued) => Ok(issued),
            Err(e) => {
                let _ = self.retire(&id, Some(&binding)).await;
                Err(e)
            }
        }
    }

    async fn issue_with_generated_key(
        &self,
        request: IssueRequest<'_>,
    ) -> Result<(IssuedCertificate, Zeroizing<Vec<u8>>), CaError> {
        let binding = binding_for(&request)?;
        let created = self
            .client
            .create_keys_and_certificate()
            .set_as_active(true)
            .send()
            .await
            .map_err(|e| map_err("CreateKeysAndCertificate", e))?;
        let id = created.certificate_id().unwrap_or_default().to_owned();
        let arn = created.certificate_arn().unwrap_or_default().to_owned();
        self.bind_or_discard(&id, &arn, &binding).await?;
        let result = (|| {
            let issued = issued_from_pem(created.certificate_pem().unwrap_or_default(), &id, &arn)?;
            let key_pem = Zeroizing::new(
                created
                    .key_pair()
                    .and_then(|k| k.private_key())
                    .unwrap_or_default()
                    .to_owned(),
            );
            let key = SigningKey::from_pem(key_pem.as_bytes())
                .map_err(|e| CaError::Internal(format!("AWS key pair: {e}")))?;
            if key.public_key_info() != issued.certificate.tbs_certificate.subject_public_key_info {
                return Err(CaError::Internal(
                    "AWS key pair does not match its certificate".into(),
                ));
            }
            Ok((issued, Zeroizing::new(key.pkcs8_der().to_vec())))
        })();
        if result.is_err() {
            let _ = self.retire(&id, Some(&binding)).await;
        }
        result
    }

    async fn retire(&self, backend_ref: &str, binding: Option<&Binding>) -> Result<(), CaError> {
        let described = self
            .client
            .describe_certificate()
            .certificate_id(backend_ref)
            .send()
            .await;
        let arn = match described {
            Ok(out) => out
                .certificate_description()
                .and_then(|d| d.certificate_arn())
                .unwrap_or_default()
                .to_owned(),
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(()),
            Err(e) => return Err(map_err("DescribeCertificate", e)),
        };
        self.client
            .update_certificate()
            .certificate_id(backend_ref)
            .new_status(CertificateStatus::Inactive)
            .send()
            .await
            .map_err(|e| map_err("UpdateCertificate", e))?;
        let policies = match binding
            .and_then(|b| b.policy.clone())
            .or(self.policy.clone())
        {
            Some(policy) => vec![policy],
            None => Vec::new(),
        };
        for policy in policies {
            match self
                .client
                .detach_policy()
                .policy_name(&policy)
                .target(&arn)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some("ResourceNotFoundException") => {}
                Err(e) => return Err(map_err("DetachPolicy", e)),
            }
        }
        if let Some(binding) = binding {
            match self
                .client
                .detach_thing_principal()
                .thing_name(&binding.thing_name)
                .principal(&arn)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some("ResourceNotFoundException") => {}
                Err(e) => return Err(map_err("DetachThingPrincipal", e)),
            }
        }
        self.client
            .delete_certificate()
            .certificate_id(backend_ref)
            .send()
            .await
            .map_err(|e| map_err("DeleteCertificate", e))?;
        tracing::info!(certificate_id = backend_ref, "retired AWS IoT certificate");
        Ok(())
    }
}

/// The thing a certificate goes to: the registry's binding, else the CSR's CN.
fn binding_for(request: &IssueRequest<'_>) -> Result<Binding, CaError> {
    if let Some(binding) = request.binding {
        return Ok(binding.clone());
    }
    let cn = request.csr.common_name().ok_or_else(|| {
        CaError::Rejected("the CSR needs a CN: it names the AWS IoT thing".into())
    })?;
    Ok(Binding {
        thing_name: cn,
        policy: None,
    })
}

fn issued_from_pem(
    pem: &str,
    certificate_id: &str,
    certificate_arn: &str,
) -> Result<IssuedCertificate, CaError> {
    let (_, der) = est_wire::pem::decode(pem.as_bytes())
        .map_err(|e| CaError::Internal(format!("AWS certificate PEM: {e}")))?;
    let certificate = Certificate::from_der(&der)
        .map_err(|e| CaError::Internal(format!("AWS certificate: {e}")))?;
    let mut issued =
        IssuedCertificate::from_certificate(certificate, Some(certificate_id.to_owned()))?;
    issued.backend_arn = (!certificate_arn.is_empty()).then(|| certificate_arn.to_owned());
    Ok(issued)
}

/// Maps an SDK error: throttling and server faults are "unavailable" (503),
/// AWS's refusal of the request is "rejected" (400), the rest is internal.
fn map_err<E, R>(operation: &str, error: SdkError<E, R>) -> CaError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = error.code().unwrap_or("").to_owned();
    let message = error.message().unwrap_or("").to_owned();
    match (&error, code.as_str()) {
        (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_), _) => {
            CaError::Unavailable(format!("{operation}: AWS IoT unreachable"))
        }
        (
            _,
            "ThrottlingException"
            | "ServiceUnavailableException"
            | "InternalFailureException"
            | "LimitExceededException",
        ) => CaError::Unavailable(format!("{operation}: {code} {message}")),
        (_, "InvalidRequestException" | "CertificateValidationException") => {
            CaError::Rejected(format!("AWS IoT refused the request: {message}"))
        }
        _ => CaError::Internal(format!(
            "{operation}: {}",
            aws_sdk_iot::error::DisplayErrorContext(&error)
        )),
    }
}

/// Test-only fault injection: `EST_FAULT_INJECTION=after-create` makes binding
/// fail right after the certificate was created, to exercise compensation.
fn fault_injection(point: &str) -> Result<(), CaError> {
    match std::env::var("EST_FAULT_INJECTION") {
        Ok(value) if value == point => {
            Err(CaError::Unavailable(format!("injected fault at {point}")))
        }
        _ => Ok(()),
    }
}
