//! Test harness: starts the real `est-server` binary on 127.0.0.1 and drives
//! it with independent tools — `curl` for HTTP/TLS and `openssl` for keys,
//! CSRs, PKCS#7 and chain verification.
//!
//! The binary is `target/debug/est-server` (or `$EST_SERVER_BIN`); the README
//! test command builds it before the tests run.

pub mod ca_tools;
pub mod device;
pub mod kms_proxy;
pub mod mosquitto;
pub mod net;
pub mod postgres;
pub mod raw;
pub mod softhsm;
pub mod webhook;

pub use device::*;
pub use kms_proxy::KmsProxy;
pub use mosquitto::Mosquitto;
pub use postgres::Postgres;
pub use raw::RawClient;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Path of the server binary under test.
pub fn server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("EST_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let path = target.join("debug").join("est-server");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p est-server` (the README test command does)",
        path.display()
    );
    path
}

/// Path of the est-client binary under test (`$EST_CLIENT_BIN` or target/debug).
pub fn client_binary() -> PathBuf {
    if let Ok(path) = std::env::var("EST_CLIENT_BIN") {
        return PathBuf::from(path);
    }
    let path = server_binary().with_file_name("est-client");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Runs est-client with `args`; returns (exit code, stdout, stderr).
pub fn est_client(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(client_binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run est-client");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An argon2 hash of `estpwd`, made once by the binary under test.
pub fn estpwd_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let output = Command::new(server_binary())
            .arg("hash-password")
            .env("EST_PASSWORD", "estpwd")
            .output()
            .expect("run est-server hash-password");
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    })
}

/// A config with the demo user, the device profile and the given extra TOML.
pub fn config_with(extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
realm = "estrealm"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
bootstrap_trust = @BOOTSTRAP@
[[users]]
name = "estuser"
password_hash = "{hash}"
[cas.edge]
dir = "edge-ca"
[profiles.device]
validity = "30d"
[profiles.edge-ca]
validity = "90d"
subordinate_ca = true
extended_key_usage = []
ca = "edge"
[enroll]
profile = "device"
[labels.edgeca]
profile = "edge-ca"
subordinate_ca_users = ["estuser"]
[labels.iot]
profile = "device"
{extra}"#,
        hash = estpwd_hash()
    )
}

/// A running server in its own data directory; killed on drop.
pub struct Server {
    /// Data directory (CA, TLS, registry, config).
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    child: Child,
    log: PathBuf,
    admin: Arc<Mutex<Option<String>>>,
}

impl Server {
    /// Starts `serve --dev` with the default test config.
    pub fn start() -> Self {
        Self::start_with(&config_with(""), None)
    }

    /// Starts `serve --dev` with `config` written to the data directory first.
    /// `bootstrap_ca` (a PEM path) fills `tls.bootstrap_trust`.
    pub fn start_with(config: &str, bootstrap_ca: Option<&Path>) -> Self {
        Self::start_with_env(config, bootstrap_ca, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables for the server.
    pub fn start_with_env(config: &str, bootstrap_ca: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let trust = match bootstrap_ca {
            Some(path) => format!("[\"{}\"]", path.display()),
            None => "[]".into(),
        };
        std::fs::write(
            dir.path().join("est-server.toml"),
            config.replace("@BOOTSTRAP@", &trust),
        )
        .unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn_on(dir, "127.0.0.1:0", env)
    }

    /// Starts `serve --dev` on a data directory prepared by the caller
    /// (its `est-server.toml` and anything else), with extra environment.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, String)]) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Self::spawn_on(dir, "127.0.0.1:0", env)
    }

    fn spawn(dir: tempfile::TempDir) -> Self {
        Self::spawn_on(dir, "127.0.0.1:0", Vec::new())
    }

    fn spawn_on(dir: tempfile::TempDir, listen: &str, env: Vec<(String, String)>) -> Self {
        let log = dir.path().join("server.log");
        let mut child = Command::new(server_binary())
            .args(["serve", "--dev", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", listen])
            .env("EST_LOG", "info")
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start est-server");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let admin = Arc::new(Mutex::new(None));
        let admin_seen = admin.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = sender.send(addr.to_owned());
                } else if let Some(addr) = line.strip_prefix("admin listening on ") {
                    *admin_seen.lock().unwrap() = Some(addr.to_owned());
                }
            }
        });
        let addr = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Self {
            dir,
            addr,
            child,
            log,
            admin,
        }
    }

    /// The admin listener's address (`admin_listen` in the config), once it is up.
    pub fn admin_addr(&self) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Some(addr) = self.admin.lock().unwrap().clone() {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no admin listener"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops and starts the server again on the same data directory (new port).
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::spawn(dir)
    }

    /// Kills the server (as by a crash or an outage), keeping its data directory.
    pub fn stop(mut self) -> StoppedServer {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        StoppedServer {
            dir,
            addr: self.addr.clone(),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path inside the data directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The trust anchor file.
    pub fn ca_pem(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// `https://localhost:<port>/.well-known/est` plus `/<label>` when given.
    pub fn base(&self, label: Option<&str>) -> String {
        let port = self.addr.rsplit(':').next().unwrap();
        match label {
            Some(label) => format!("https://localhost:{port}/.well-known/est/{label}"),
            None => format!("https://localhost:{port}/.well-known/est"),
        }
    }

    /// `https://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        let port = self.addr.rsplit(':').next().unwrap();
        format!("https://localhost:{port}{path}")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an `est-server` admin subcommand against this server's data dir.
    pub fn admin(&self, args: &[&str]) -> String {
        admin_in(self.dir.path(), args, &[])
    }

    /// An `est-server <args> --data-dir <dir>` command for this server, to
    /// run with its own stdio.
    pub fn admin_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(server_binary());
        command.args(args).arg("--data-dir").arg(self.dir.path());
        command
    }

    /// Runs an admin subcommand with extra environment variables (AWS credentials).
    pub fn admin_env(&self, args: &[&str], env: &[(&str, String)]) -> String {
        admin_in(self.dir.path(), args, env)
    }

    /// Checks the server still enrolls and never panicked.
    pub fn assert_healthy(&self) {
        let work = tempfile::tempdir().unwrap();
        let csr = Csr::new(
            work.path(),
            "health",
            KeyType::P256,
            "/CN=health-check",
            &[],
        );
        let response = self.curl(&[
            "-u",
            "estuser:estpwd",
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &format!("@{}", csr.b64.display()),
            &format!("{}/simpleenroll", self.base(None)),
        ]);
        assert_eq!(
            response.status,
            200,
            "health enrollment: {}",
            response.text()
        );
        assert!(
            !self.log().contains("panicked"),
            "panic in log:\n{}",
            self.log()
        );
    }

    /// Runs curl against this server, trusting its CA.
    pub fn curl(&self, args: &[&str]) -> HttpResponse {
        let mut full = vec!["--cacert".to_owned(), self.ca_pem().display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        curl(&full)
    }
}

/// Runs `est-server <args> --data-dir <dir>` with extra environment
/// variables and returns its stdout; panics with its stderr when it fails.
fn admin_in(dir: &Path, args: &[&str], env: &[(&str, String)]) -> String {
    let output = Command::new(server_binary())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "est-server {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A server that was stopped; [`StoppedServer::start`] brings it back on the same port.
pub struct StoppedServer {
    dir: tempfile::TempDir,
    addr: String,
}

impl StoppedServer {
    /// Runs an admin subcommand on the stopped server's data directory.
    pub fn admin(&self, args: &[&str]) -> String {
        admin_in(self.dir.path(), args, &[])
    }

    /// Starts the server again on its old address and data directory.
    pub fn start(self) -> Server {
        Server::spawn_on(self.dir, &self.addr, Vec::new())
    }

    /// Starts the server again on a new port with extra environment variables.
    pub fn start_with_env(self, env: &[(&str, &str)]) -> Server {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::spawn_on(self.dir, "127.0.0.1:0", env)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl saw.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code (0 when no HTTP response arrived).
    pub status: u16,
    /// Raw header block, exactly as received.
    pub headers: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// curl's exit code.
    pub exit: i32,
    /// curl's stderr.
    pub stderr: String,
}

impl HttpResponse {
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Value of the header spelled exactly `name` (case-sensitive on purpose).
    pub fn header_exact(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        })
    }
}

/// Runs curl with `-s` and captures status, raw headers and body.
pub fn curl(args: &[String]) -> HttpResponse {
    let work = tempfile::tempdir().unwrap();
    let headers = work.path().join("headers");
    let body = work.path().join("body");
    let output = Command::new("curl")
        .args(["-s", "-S", "--max-time", "30", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    HttpResponse {
        status: String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        exit: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs openssl with `args`, panicking with its stderr on failure.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    openssl_with_input(args, None)
}

/// Runs openssl feeding `input` on stdin.
pub fn openssl_with_input(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input).unwrap();
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Key types for test CSRs.
#[derive(Debug, Clone, Copy)]
pub enum KeyType {
    /// EC P-256.
    P256,
    /// EC P-384.
    P384,
    /// RSA with the given bits.
    Rsa(u32),
    /// EC secp256k1 (must be refused).
    Secp256k1,
}

/// A private key plus a CSR made by openssl.
pub struct Csr {
    /// PEM private key.
    pub key: PathBuf,
    /// DER CSR.
    pub der: PathBuf,
    /// base64 CSR in 64-column lines (what `openssl base64` writes).
    pub b64: PathBuf,
}

impl Csr {
    /// Makes a fresh key and a CSR for `subject` with optional `-addext` values.
    pub fn new(dir: &Path, name: &str, key: KeyType, subject: &str, addext: &[&str]) -> Self {
        let key_path = dir.join(format!("{name}.key"));
        let key_str = key_path.display().to_string();
        match key {
            KeyType::P256 => openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key_str,
            ]),
            KeyType::P384 => openssl(&[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                &key_str,
            ]),
            KeyType::Secp256k1 => openssl(&[
                "ecparam",
                "-name",
                "secp256k1",
                "-genkey",
                "-noout",
                "-out",
                &key_str,
            ]),
            KeyType::Rsa(bits) => openssl(&["genrsa", "-out", &key_str, &bits.to_string()]),
        };
        Self::for_key(dir, name, &key_path, subject, addext)
    }

    /// Makes a CSR for an existing key.
    pub fn for_key(dir: &Path, name: &str, key: &Path, subject: &str, addext: &[&str]) -> Self {
        let der = dir.join(format!("{name}.csr.der"));
        let b64 = dir.join(format!("{name}.csr.b64"));
        let key_str = key.display().to_string();
        let der_str = der.display().to_string();
        let mut args = vec![
            "req", "-new", "-key", &key_str, "-subj", subject, "-outform", "DER", "-out", &der_str,
        ];
        for ext in addext {
            args.push("-addext");
            args.push(ext);
        }
        openssl(&args);
        let encoded = openssl(&["base64", "-in", &der_str]);
        std::fs::write(&b64, encoded).unwrap();
        Self {
            key: key.to_path_buf(),
            der,
            b64,
        }
    }
}

/// Decodes a base64 certs-only body into PEM certificates via openssl.
pub fn pkcs7_to_pem(body: &[u8]) -> String {
    let der = openssl_with_input(&["base64", "-d"], Some(body));
    let pem = openssl_with_input(&["pkcs7", "-inform", "DER", "-print_certs"], Some(&der));
    String::from_utf8(pem).unwrap()
}

/// Number of certificates in a PEM text.
pub fn count_certs(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// `openssl x509 -noout <args>` on a PEM certificate file.
pub fn x509(cert: &Path, args: &[&str]) -> String {
    let path = cert.display().to_string();
    let mut full = vec!["x509", "-in", &path, "-noout"];
    full.extend_from_slice(args);
    String::from_utf8(openssl(&full)).unwrap()
}

/// A PEM certificate's serial as the registry writes it (lower-case hex).
pub fn serial_of(cert: &Path) -> String {
    x509(cert, &["-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// The registry state (`active`, `superseded`, …) of a certificate, from `certs list`.
pub fn state_of(server: &Server, serial: &str) -> String {
    let listing = server.admin(&["certs", "list"]);
    let line = listing
        .lines()
        .find(|l| l.starts_with(serial))
        .unwrap_or_else(|| panic!("{serial} not in\n{listing}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

/// Reads everything from a reader into a string (helper for raw sockets).
pub fn read_all(mut reader: impl Read) -> String {
    let mut text = String::new();
    let _ = reader.read_to_string(&mut text);
    text
}

/// POSTs a CSR file (base64) to `<base>/<op>` with extra curl args.
pub fn post_csr(
    server: &Server,
    label: Option<&str>,
    op: &str,
    b64: &Path,
    extra: &[&str],
) -> HttpResponse {
    let url = format!("{}/{op}", server.base(label));
    let data = format!("@{}", b64.display());
    let mut args: Vec<&str> = vec![
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &data,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    server.curl(&args)
}

/// Enrolls `csr` with the demo user and returns the issued certificate as PEM, written to `out`.
pub fn enroll_basic(server: &Server, label: Option<&str>, csr: &Csr, out: &Path) -> String {
    let response = post_csr(
        server,
        label,
        "simpleenroll",
        &csr.b64,
        &["-u", "estuser:estpwd"],
    );
    assert_eq!(response.status, 200, "enroll: {}", response.text());
    let pem = pkcs7_to_pem(&response.body);
    assert_eq!(
        count_certs(&pem),
        1,
        "enroll response holds only the issued certificate"
    );
    std::fs::write(out, &pem).unwrap();
    pem
}

/// A manufacturer CA made by openssl, able to sign bootstrap device certificates.
pub struct ManufacturerCa {
    /// CA certificate (PEM).
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

impl ManufacturerCa {
    /// Creates the CA in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &cert.display().to_string(),
        ]);
        Self {
            cert,
            key,
            dir: dir.to_path_buf(),
        }
    }

    /// Issues a clientAuth certificate for CN=`cn`; returns (cert, key).
    pub fn issue(&self, cn: &str) -> (PathBuf, PathBuf) {
        let csr = Csr::new(
            &self.dir,
            &format!("boot-{cn}"),
            KeyType::P256,
            &format!("/CN={cn}"),
            &[],
        );
        let ext = self.dir.join("client.ext");
        std::fs::write(&ext, "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n").unwrap();
        let cert = self.dir.join(format!("boot-{cn}.pem"));
        openssl(&[
            "x509",
            "-req",
            "-inform",
            "DER",
            "-in",
            &csr.der.display().to_string(),
            "-CA",
            &self.cert.display().to_string(),
            "-CAkey",
            &self.key.display().to_string(),
            "-set_serial",
            "0x0badc0de",
            "-days",
            "30",
            "-extfile",
            &ext.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ]);
        (cert, csr.key)
    }
}

/// A moto server (AWS emulator, PyPI `moto[server]`) with the project's IoT
/// patches (`tests/moto/est_moto.py`), on 127.0.0.1; killed on drop.
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The test CA moto's patched IoT signs with (PEM).
    pub ca_pem: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto; panics loudly when it is not installed (`pip install "moto[server]"`).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("moto/est_moto.py");
        let mut child = Command::new("python3")
            .arg(&launcher)
            .args(["--port", &port.to_string(), "--ca-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("moto.log")).unwrap())
            .spawn()
            .expect("python3 with moto[server] is needed (the README test command installs it)");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("moto listening on") {
                    let _ = sender.send(());
                }
            }
        });
        if receiver.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!(
                "moto did not start: {}",
                std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
            );
        }
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            ca_pem: dir.path().join("ca.pem"),
            child,
            _dir: dir,
        }
    }

    /// Environment for an AWS SDK client pointed at this moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Runs a boto3 snippet (with `iot`, `ddb` and `kms` clients bound) and returns its stdout.
    pub fn boto(&self, script: &str) -> String {
        let program = format!(
            "import boto3, json\niot = boto3.client('iot', endpoint_url='{e}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\nddb = boto3.client('dynamodb', endpoint_url='{e}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\nkms = boto3.client('kms', endpoint_url='{e}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{script}\n",
            e = self.endpoint
        );
        let output = Command::new("python3")
            .arg("-c")
            .arg(&program)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "boto3: {}\n{program}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
