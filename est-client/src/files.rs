//! Atomic file writes, and installing a certificate + key pair crash-safely.
//!
//! [`install_pair`] writes `cert.new`/`key.new` (fsynced), keeps the current
//! pair as `cert.prev`/`key.prev`, then renames the key and the certificate
//! into place. A crash can only stop it between two of those steps, and
//! [`recover_pair`] — run before every use — finishes or rolls back what it
//! finds, so a reader always gets either the old or the new complete pair.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use der::Decode;
use est_wire::keys::SigningKey;
use x509_cert::Certificate;

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = sibling(path, &format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    sync_dir(path);
    Ok(())
}

/// `path` with `.suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(handle) = fs::File::open(dir) {
            let _ = handle.sync_all();
        }
    }
}

/// Installs a new certificate (PEM) and, when rotating, a new key (PEM).
pub fn install_pair(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &str,
    key_pem: Option<&str>,
) -> anyhow::Result<()> {
    let cert_new = sibling(cert_path, "new");
    let key_new = sibling(key_path, "new");
    // 1. Stage the new files, complete and durable.
    write_atomic(&cert_new, cert_pem.as_bytes(), 0o644)?;
    if let Some(key_pem) = key_pem {
        write_atomic(&key_new, key_pem.as_bytes(), 0o600)?;
    }
    // 2. Keep the current pair as .prev.
    if cert_path.exists() {
        write_atomic(&sibling(cert_path, "prev"), &fs::read(cert_path)?, 0o644)?;
    }
    if key_pem.is_some() && key_path.exists() {
        write_atomic(&sibling(key_path, "prev"), &fs::read(key_path)?, 0o600)?;
    }
    // 3. Key first, then certificate (recover_pair knows this order).
    if key_pem.is_some() {
        fs::rename(&key_new, key_path)?;
        sync_dir(key_path);
    }
    fs::rename(&cert_new, cert_path)?;
    sync_dir(cert_path);
    Ok(())
}

/// Puts the pair kept as `.prev` by the last [`install_pair`] back in place
/// (itself through [`install_pair`], so it is as crash-safe; the pair it
/// replaces becomes the new `.prev`). The key is restored only when the last
/// install changed it: `key.prev` is used only if the current key does not
/// fit `cert.prev` and `key.prev` does.
pub fn restore_previous_pair(cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
    let cert_prev = sibling(cert_path, "prev");
    let key_prev = sibling(key_path, "prev");
    let cert_pem = fs::read_to_string(&cert_prev)
        .with_context(|| format!("cannot read {}", cert_prev.display()))?;
    let key_pem = if pair_matches(&cert_prev, key_path)? {
        None
    } else if pair_matches(&cert_prev, &key_prev)? {
        Some(fs::read_to_string(&key_prev)?)
    } else {
        anyhow::bail!(
            "no key fits {}: cannot restore the previous pair",
            cert_prev.display()
        );
    };
    install_pair(cert_path, key_path, &cert_pem, key_pem.as_deref())
}

/// What [`recover_pair`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The pair matched; stray staging files (if any) were removed.
    Consistent,
    /// An interrupted install was completed (the new pair is in place).
    Completed,
    /// An interrupted install was rolled back (the previous pair is in place).
    RolledBack,
    /// Neither file exists yet.
    Empty,
}

/// Repairs the effects of a crash during [`install_pair`].
pub fn recover_pair(cert_path: &Path, key_path: &Path) -> anyhow::Result<Recovery> {
    let cert_new = sibling(cert_path, "new");
    let key_new = sibling(key_path, "new");
    if !cert_path.exists() && !key_path.exists() && !cert_new.exists() {
        return Ok(Recovery::Empty);
    }
    if key_path.exists() && cert_path.exists() && pair_matches(cert_path, key_path)? {
        let _ = fs::remove_file(&cert_new);
        let _ = fs::remove_file(&key_new);
        return Ok(Recovery::Consistent);
    }
    // The key was moved into place but the certificate was not: finish.
    if cert_new.exists() && key_path.exists() && pair_matches(&cert_new, key_path)? {
        fs::rename(&cert_new, cert_path)?;
        sync_dir(cert_path);
        let _ = fs::remove_file(&key_new);
        return Ok(Recovery::Completed);
    }
    // Otherwise go back to the previous key, if it fits the certificate in place.
    let key_prev = sibling(key_path, "prev");
    if cert_path.exists() && key_prev.exists() && pair_matches(cert_path, &key_prev)? {
        write_atomic(key_path, &fs::read(&key_prev)?, 0o600)?;
        let _ = fs::remove_file(&cert_new);
        let _ = fs::remove_file(&key_new);
        return Ok(Recovery::RolledBack);
    }
    anyhow::bail!(
        "{} and {} do not belong together and cannot be repaired",
        cert_path.display(),
        key_path.display()
    )
}

/// True when the certificate in `cert_path` certifies the key in `key_path`.
pub fn pair_matches(cert_path: &Path, key_path: &Path) -> anyhow::Result<bool> {
    let Ok(cert) = read_certificate(cert_path) else {
        return Ok(false);
    };
    let Ok(key_pem) = fs::read(key_path) else {
        return Ok(false);
    };
    let Ok(key) = SigningKey::from_pem(&key_pem) else {
        return Ok(false);
    };
    Ok(cert.tbs_certificate.subject_public_key_info == key.public_key_info())
}

/// Reads the first certificate of a PEM file.
pub fn read_certificate(path: &Path) -> anyhow::Result<Certificate> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let der = rustls_pemfile::certs(&mut bytes.as_slice())
        .next()
        .with_context(|| format!("{} holds no certificate", path.display()))?
        .with_context(|| format!("{} is not PEM", path.display()))?;
    Certificate::from_der(der.as_ref())
        .with_context(|| format!("{} is not a certificate", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use est_wire::keys::KeyAlgorithm;

    /// A self-signed-looking certificate for `key`: only the SPKI matters here.
    fn cert_for(key: &SigningKey) -> String {
        use der::Encode;
        let bundle = include_str!("../../est-wire/testdata/two-certs.p7b.pem");
        let der = est_wire::body::decode(bundle.as_bytes()).unwrap();
        let mut cert = est_wire::pkcs7::decode_certs_only(&der).unwrap().remove(0);
        cert.tbs_certificate.subject_public_key_info = key.public_key_info();
        est_wire::pem::encode("CERTIFICATE", &cert.to_der().unwrap())
    }

    struct Pair {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        old_key: String,
        new_key: String,
        old_cert: String,
        new_cert: String,
    }

    fn installed_old_pair() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let old = SigningKey::generate(KeyAlgorithm::EcP256).unwrap();
        let new = SigningKey::generate(KeyAlgorithm::EcP256).unwrap();
        let pair = Pair {
            cert: dir.path().join("device.pem"),
            key: dir.path().join("device.key"),
            old_key: old.to_pkcs8_pem(),
            new_key: new.to_pkcs8_pem(),
            old_cert: cert_for(&old),
            new_cert: cert_for(&new),
            _dir: dir,
        };
        install_pair(&pair.cert, &pair.key, &pair.old_cert, Some(&pair.old_key)).unwrap();
        pair
    }

    #[test]
    fn a_full_install_replaces_both_and_keeps_prev() {
        let p = installed_old_pair();
        install_pair(&p.cert, &p.key, &p.new_cert, Some(&p.new_key)).unwrap();
        assert_eq!(fs::read_to_string(&p.cert).unwrap(), p.new_cert);
        assert_eq!(
            fs::read_to_string(sibling(&p.cert, "prev")).unwrap(),
            p.old_cert
        );
        assert_eq!(recover_pair(&p.cert, &p.key).unwrap(), Recovery::Consistent);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p.key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn the_previous_pair_can_be_restored() {
        // With a new key: both come back.
        let p = installed_old_pair();
        install_pair(&p.cert, &p.key, &p.new_cert, Some(&p.new_key)).unwrap();
        restore_previous_pair(&p.cert, &p.key).unwrap();
        assert_eq!(fs::read_to_string(&p.cert).unwrap(), p.old_cert);
        assert_eq!(fs::read_to_string(&p.key).unwrap(), p.old_key);
        assert_eq!(recover_pair(&p.cert, &p.key).unwrap(), Recovery::Consistent);

        // Same key (certificate only): a stale key.prev is left alone.
        let p = installed_old_pair();
        install_pair(&p.cert, &p.key, &p.new_cert, Some(&p.new_key)).unwrap();
        let renewed_same_key = p.new_cert.clone();
        install_pair(&p.cert, &p.key, &renewed_same_key, None).unwrap();
        restore_previous_pair(&p.cert, &p.key).unwrap();
        assert_eq!(fs::read_to_string(&p.key).unwrap(), p.new_key);
        assert!(pair_matches(&p.cert, &p.key).unwrap());
    }

    #[test]
    fn every_crash_point_recovers_to_a_complete_pair() {
        // After staging only: old pair untouched.
        let p = installed_old_pair();
        write_atomic(&sibling(&p.cert, "new"), p.new_cert.as_bytes(), 0o644).unwrap();
        write_atomic(&sibling(&p.key, "new"), p.new_key.as_bytes(), 0o600).unwrap();
        assert_eq!(recover_pair(&p.cert, &p.key).unwrap(), Recovery::Consistent);
        assert_eq!(fs::read_to_string(&p.key).unwrap(), p.old_key);
        assert!(!sibling(&p.cert, "new").exists());

        // After the key was renamed but not the certificate: completed to the new pair.
        let p = installed_old_pair();
        write_atomic(&sibling(&p.cert, "new"), p.new_cert.as_bytes(), 0o644).unwrap();
        write_atomic(&sibling(&p.key, "prev"), p.old_key.as_bytes(), 0o600).unwrap();
        write_atomic(&p.key, p.new_key.as_bytes(), 0o600).unwrap();
        assert_eq!(recover_pair(&p.cert, &p.key).unwrap(), Recovery::Completed);
        assert_eq!(fs::read_to_string(&p.cert).unwrap(), p.new_cert);
        assert!(pair_matches(&p.cert, &p.key).unwrap());

        // New key in place, staged certificate lost: rolled back to the old pair.
        let p = installed_old_pair();
        write_atomic(&sibling(&p.key, "prev"), p.old_key.as_bytes(), 0o600).unwrap();
        write_atomic(&p.key, p.new_key.as_bytes(), 0o600).unwrap();
        assert_eq!(recover_pair(&p.cert, &p.key).unwrap(), Recovery::RolledBack);
        assert_eq!(fs::read_to_string(&p.key).unwrap(), p.old_key);
        assert!(pair_matches(&p.cert, &p.key).unwrap());
    }
}
