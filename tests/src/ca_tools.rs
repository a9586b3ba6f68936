//! Helpers for the CA-custody tests (signers, KMS): `est-server` commands
//! on a data directory, `openssl verify` against a CA directory, and an
//! offline root made and operated by openssl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{openssl, server_binary};

/// Runs `est-server <args> --data-dir <dir>` with `env`.
pub fn est_server_in(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(server_binary())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// The stdout of a command that must succeed (its stderr otherwise).
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A `serve --dev` on `dir` (on a free port) that must fail at start within
/// 30 s: returns its stderr. A server that starts after all is killed and
/// the test fails (instead of waiting for it for ever).
pub fn start_fails_in(dir: &Path, env: &[(&str, String)]) -> String {
    let mut child = Command::new(server_binary())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started:\n{}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "the server exited cleanly");
    stderr.join().unwrap()
}

/// `openssl verify` of `cert` against the CA in `ca_dir` (root trusted,
/// issuing CA untrusted).
pub fn verify_against(ca_dir: &Path, cert: &Path) {
    let out = openssl(&[
        "verify",
        "-CAfile",
        &ca_dir.join("root-ca.pem").display().to_string(),
        "-untrusted",
        &ca_dir.join("issuing-ca.pem").display().to_string(),
        &cert.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&out).contains(": OK"));
}

/// A P-256 root CA kept by openssl in a directory of its own (`CN=Offline
/// Root`), as an operator's offline ceremony would.
pub struct OfflineRoot {
    /// Its directory (`root.pem`, `root.key`, `ext.cnf`).
    pub dir: tempfile::TempDir,
    /// The root certificate (PEM).
    pub cert: PathBuf,
    key: PathBuf,
    ext: PathBuf,
}

impl OfflineRoot {
    /// Makes the key and the self-signed root.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let (cert, key, ext) = (path("root.pem"), path("root.key"), path("ext.cnf"));
        let text = |p: &Path| p.display().to_string();
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &text(&key),
        ]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &text(&key),
            "-subj",
            "/CN=Offline Root",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &text(&cert),
        ]);
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
        )
        .unwrap();
        Self {
            dir,
            cert,
            key,
            ext,
        }
    }

    /// A path in the root's directory.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Signs the issuing-CA request `csr` (PEM) into `out`: CA:true,
    /// pathlen 0, five years.
    pub fn sign_issuing(&self, csr: &str, out: &str) {
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            &self.cert.display().to_string(),
            "-CAkey",
            &self.key.display().to_string(),
            "-CAcreateserial",
            "-days",
            "1825",
            "-extfile",
            &self.ext.display().to_string(),
            "-out",
            out,
        ]);
    }
}

impl Default for OfflineRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// Fetches `path` (a CRL URL path such as `/crl`) from `server`, checks its
/// signature with `openssl crl -verify` against `issuing` (PEM) and that it
/// lists `serial`; returns openssl's text of it.
pub fn crl_lists(server: &crate::Server, path: &str, issuing: &Path, serial: &str) -> String {
    let crl = server.curl(&["-o", "-", &server.url(path)]);
    assert_eq!(crl.status, 200, "{path}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &crl.body).unwrap();
    let output = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(file.path())
        .arg("-CAfile")
        .arg(issuing)
        .args(["-noout", "-text", "-verify"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("verify OK"),
        "{text}"
    );
    assert!(
        text.to_ascii_uppercase()
            .contains(&serial.to_ascii_uppercase()),
        "{serial} not on the CRL: {text}"
    );
    text
}

/// Renews `cert` over mTLS with `csr`'s key (same subject `subject`),
/// writes the successor to `out` and checks it against the CA in `ca_dir`.
pub fn renew_and_verify(
    server: &crate::Server,
    csr: &crate::Csr,
    cert: &Path,
    subject: &str,
    ca_dir: &Path,
    out: &Path,
) {
    let work = out.parent().unwrap();
    let name = format!("{}-renew", out.file_stem().unwrap().to_string_lossy());
    let renew = crate::Csr::for_key(work, &name, &csr.key, subject, &[]);
    let (c, k) = (cert.display().to_string(), csr.key.display().to_string());
    let response = crate::post_csr(
        server,
        None,
        "simplereenroll",
        &renew.b64,
        &["--cert", &c, "--key", &k],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    std::fs::write(out, crate::pkcs7_to_pem(&response.body)).unwrap();
    verify_against(ca_dir, out);
}
