//! Zero-setup development mode: everything a first enrollment needs, in one directory.
//!
//! `est-server serve --dev` creates (once) under the data directory:
//! `ca/` (root + issuing CA, keys 0600), `tls/server.pem` + `tls/server.key`
//! (a TLS server certificate for localhost / 127.0.0.1 / ::1 issued by the
//! issuing CA), `ca.pem` (the root: the one trust anchor a client needs),
//! `registry.sqlite`, and `est-server.toml` with a demo Basic user
//! `estuser` / `estpwd` (libest's demo defaults). Later runs reuse them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ca_backends::Profile;
use der::asn1::{Ia5String, OctetString};
use est_wire::keys::{KeyAlgorithm, SigningKey};
use est_wire::pem::certificate_to_pem;
use x509_cert::ext::pkix::name::GeneralName;

use crate::config::Config;
use crate::secure_files::{create_private_dir, write_new as write_file};

/// Id of the demo device dev mode registers (token in `demo-device.token`).
pub const DEMO_DEVICE: &str = "demo-device-001";

/// Name of the config file dev mode writes into the data directory.
pub const CONFIG_FILE: &str = "est-server.toml";

/// Prepares `data_dir` and returns the path of its config file.
pub async fn prepare(data_dir: &Path) -> anyhow::Result<PathBuf> {
    create_private_dir(data_dir)?;
    let config_path = data_dir.join(CONFIG_FILE);
    if !config_path.exists() {
        let hash =
            crate::authority::auth::hash_password("estpwd").map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = DEV_CONFIG.replace("@HASH@", &hash);
        write_file(&config_path, text.as_bytes(), 0o600)?;
    }
    let config = Config::load(&config_path)?;
    let ca = crate::server::open_ca(&config).await?;

    if !config.tls.cert.exists() {
        let key = SigningKey::generate(KeyAlgorithm::EcP256).map_err(|e| anyhow::anyhow!("{e}"))?;
        let subject = ca_backends::local::parse_name("CN=localhost,O=est-server dev")?;
        let names = vec![
            GeneralName::DnsName(Ia5String::new("localhost")?),
            GeneralName::IpAddress(OctetString::new(vec![127, 0, 0, 1])?),
            GeneralName::IpAddress(OctetString::new(
                std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
            )?),
        ];
        let issued = ca
            .issue(
                &subject,
                &key.public_key_info(),
                &names,
                &Profile::tls_server(Duration::from_secs(365 * 24 * 3600)),
            )
            .await?;
        if let Some(dir) = config.tls.cert.parent() {
            create_private_dir(dir)?;
        }
        write_file(&config.tls.key, key.to_pkcs8_pem().as_bytes(), 0o600)?;
        let chain = format!(
            "{}{}",
            certificate_to_pem(&issued.certificate),
            certificate_to_pem(ca.issuing())
        );
        write_file(&config.tls.cert, chain.as_bytes(), 0o644)?;
    }
    // A demo device for the vending-machine flow; its token is shown once and kept 0600.
    let token_file = data_dir.join("demo-device.token");
    if !token_file.exists() {
        let registry = crate::registry::SqliteRegistry::open(&config.registry.path)?;
        let (device, token) =
            crate::devices::provision(DEMO_DEVICE.into(), String::new(), None, None);
        let added = crate::registry::Registry::add_devices(&registry, vec![device]).await?;
        if added == [true] {
            write_file(&token_file, token.as_bytes(), 0o600)?;
        }
    }
    let anchor = data_dir.join("ca.pem");
    if !anchor.exists() {
        write_file(&anchor, certificate_to_pem(ca.root()).as_bytes(), 0o644)?;
    }
    Ok(config_path)
}

/// Prints what to try against a freshly started dev server.
pub fn print_instructions(data_dir: &Path, listen: SocketAddr) {
    let dir = data_dir.display();
    let base = format!("https://localhost:{}/.well-known/est", listen.port());
    println!(
        "\
est-server dev mode
  data directory : {dir}
  trust anchor   : {dir}/ca.pem
  demo user      : estuser / estpwd
  demo device    : {DEMO_DEVICE} / $(cat {dir}/demo-device.token)   (one-time token)
Try it:
  curl --cacert {dir}/ca.pem {base}/cacerts | openssl base64 -d | openssl pkcs7 -inform DER -print_certs
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key -subj /CN=device-1 -outform DER | openssl base64 > device.b64
  curl --cacert {dir}/ca.pem -u estuser:estpwd -H 'Content-Type: application/pkcs10' --data-binary @device.b64 {base}/simpleenroll \\
    | openssl base64 -d | openssl pkcs7 -inform DER -print_certs > device.pem
  openssl verify -CAfile {dir}/ca.pem -untrusted <(curl -s --cacert {dir}/ca.pem {base}/cacerts | openssl base64 -d | openssl pkcs7 -inform DER -print_certs) device.pem"
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

/// The commented example config (also what dev mode writes, with a real hash).
const DEV_CONFIG: &str = include_str!("../est-server.example.toml");

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let hash = crate::authority::auth::hash_password("x").unwrap();
        std::fs::write(&path, super::DEV_CONFIG.replace("@HASH@", &hash)).unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        assert!(config.labels.contains_key("edgeca"));
        assert_eq!(config.users.len(), 1);
    }
}
