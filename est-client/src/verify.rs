//! Checks an issued certificate against the trust anchors before it is installed.

use der::Encode;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_cert::Certificate;

/// Verifies that `leaf` chains to one of `anchors` through `intermediates`
/// (typically the `/cacerts` chain) and is valid now. Accepts certificates
/// without EKU or with clientAuth.
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[CertificateDer<'static>],
) -> anyhow::Result<()> {
    let leaf_der = CertificateDer::from(leaf.to_der()?);
    let intermediates: Vec<CertificateDer<'static>> = intermediates
        .iter()
        .filter_map(|c| c.to_der().ok())
        .map(CertificateDer::from)
        .collect();
    let anchors: Vec<_> = anchors
        .iter()
        .filter_map(|a| {
            webpki::anchor_from_trusted_cert(a)
                .ok()
                .map(|t| t.to_owned())
        })
        .collect();
    if anchors.is_empty() {
        anyhow::bail!("no usable trust anchor");
    }
    let end_entity = EndEntityCert::try_from(&leaf_der)
        .map_err(|e| anyhow::anyhow!("issued certificate: {e}"))?;
    let algorithms =
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    end_entity
        .verify_for_usage(
            algorithms.all,
            &anchors,
            &intermediates,
            UnixTime::now(),
            KeyUsage::required_if_present(CLIENT_AUTH),
            None,
            None,
        )
        .map_err(|e| {
            anyhow::anyhow!("issued certificate does not verify against the trust anchors: {e}")
        })?;
    Ok(())
}

/// id-kp-clientAuth, DER content octets of 1.3.6.1.5.5.7.3.2.
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
