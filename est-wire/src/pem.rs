//! PEM helpers for certificates and keys (RFC 7468).

use der::{Decode, Encode};
use x509_cert::Certificate;

/// Parses every `CERTIFICATE` block in `pem`, in order.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Certificate>, der::Error> {
    Certificate::load_pem_chain(pem)
}

/// Encodes one certificate as a PEM `CERTIFICATE` block ending in a newline.
pub fn certificate_to_pem(cert: &Certificate) -> String {
    let der = cert.to_der().expect("a decoded certificate re-encodes");
    encode("CERTIFICATE", &der)
}

/// Encodes `der` under `label` with 64-column lines and LF endings.
pub fn encode(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .expect("PEM encoding of a bounded buffer cannot fail")
}

/// Decodes one PEM block, returning its label and bytes.
pub fn decode(pem: &[u8]) -> Result<(String, Vec<u8>), der::Error> {
    let (label, der) = der::pem::decode_vec(pem)?;
    Ok((label.to_owned(), der))
}

/// Parses one DER certificate.
pub fn certificate_from_der(der: &[u8]) -> Result<Certificate, der::Error> {
    Certificate::from_der(der)
}
