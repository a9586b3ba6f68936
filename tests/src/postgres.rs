//! A private PostgreSQL cluster for the registry tests: `initdb` in a temp
//! dir, `pg_ctl start` on 127.0.0.1 and a free port, trust authentication,
//! stopped (immediately) on drop. No system service is used.
//!
//! `initdb` refuses to run as root, so as root the cluster runs as the user
//! `postgres` (Debian's package creates it; else `estpg`, created here if
//! missing). `run-tests.sh` installs the Debian package `postgresql` when no
//! `initdb` is found; without it these tests fail loudly rather than skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mosquitto::Mosquitto;

/// A running cluster; stopped on drop.
pub struct Postgres {
    /// Port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    user: Option<String>,
    options: String,
    _dir: tempfile::TempDir,
}

/// The directory holding `initdb`, `pg_ctl` and `createdb`.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("initdb"))
        .find(|p| p.exists());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/initdb"))
        .filter(|p| p.exists())
        .max();
    let initdb = on_path.or(debian).expect(
        "initdb not found: run ./run-tests.sh (it installs the Debian package `postgresql`)",
    );
    // Follow /usr/local/bin symlinks to the real bin dir (pg_ctl finds
    // `postgres` beside itself).
    std::fs::canonicalize(&initdb)
        .unwrap_or(initdb)
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The unprivileged user the cluster runs as when the tests run as root.
fn cluster_user() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return None;
    }
    for user in ["postgres", "estpg"] {
        if Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(user.into());
        }
    }
    let created = Command::new("useradd")
        .args(["--system", "--no-create-home", "estpg"])
        .status()
        .expect("useradd");
    assert!(created.success(), "useradd estpg failed");
    Some("estpg".into())
}

impl Postgres {
    /// Creates and starts a cluster (superuser `postgres`, no password).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like [`Postgres::start`], with TLS on (`ssl = on`), the server
    /// certificate for 127.0.0.1 signed by a fresh CA; returns the CA (PEM) too.
    pub fn start_tls() -> (Self, Vec<u8>) {
        let certs = tempfile::tempdir().unwrap();
        let path = |name: &str| certs.path().join(name).display().to_string();
        crate::openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
            "-subj",
            "/CN=test database CA",
            "-days",
            "2",
        ]);
        crate::openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &path("server.key"),
            "-out",
            &path("server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            certs.path().join("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        crate::openssl(&[
            "x509",
            "-req",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-out",
            &path("server.crt"),
            "-days",
            "2",
            "-extfile",
            &path("ext"),
        ]);
        let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
        let pg = Self::start_with(Some(certs.path()));
        (pg, ca)
    }

    fn start_with(tls: Option<&Path>) -> Self {
        let bin = bin_dir();
        let user = cluster_user();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if let Some(user) = &user {
            let owned = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(owned.success());
        }
        let port = Mosquitto::free_port();
        let mut pg = Self {
            port,
            bin,
            data,
            user,
            options: String::new(),
            _dir: dir,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=300",
            pg.data.display()
        );
        if let Some(certs) = tls {
            for name in ["server.crt", "server.key"] {
                std::fs::copy(certs.join(name), pg.data.join(name)).unwrap();
            }
            use std::os::unix::fs::PermissionsExt;
            let key = pg.data.join("server.key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some(user) = &pg.user {
                let owned = Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(pg.data.join("server.crt"))
                    .arg(&key)
                    .status()
                    .unwrap();
                assert!(owned.success());
            }
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        pg.options = options;
        pg.start_again();
        pg
    }

    /// Stops the cluster (`pg_ctl stop -m fast`: clients are disconnected,
    /// open transactions rolled back), keeping its data directory and port.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the cluster (again) on the same port and data directory.
    pub fn start_again(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &self.options,
                "-l",
                self.data.join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        match &self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(self.data.parent().unwrap_or(Path::new("/")))
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ],
        );
        self.url(name)
    }

    /// Runs `sql` in database `name` (psql, stopping at the first error).
    pub fn psql(&self, name: &str, sql: &str) {
        self.run(
            "psql",
            &["-q", "-v", "ON_ERROR_STOP=1", &self.url(name), "-c", sql],
        );
    }

    /// The result of `sql` in database `name`, unaligned, without headers.
    pub fn query(&self, name: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-qtA", "-v", "ON_ERROR_STOP=1", &self.url(name), "-c", sql])
            .current_dir(self.data.parent().unwrap_or(Path::new("/")))
            .output()
            .unwrap_or_else(|e| panic!("psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Opens a transaction in database `name`, runs `sql` in it (a `LOCK
    /// TABLE`, say) and keeps it open until [`Held::release`] or drop.
    /// Returns once `sql` has run (the lock is held).
    pub fn hold(&self, name: &str, sql: &str) -> Held {
        let mut child = self
            .command("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", &self.url(name)])
            .current_dir(self.data.parent().unwrap_or(Path::new("/")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // Its connection's end when a test stops the cluster is no news.
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("psql: {e}"));
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN;\n{sql};\n\\echo held").unwrap();
        stdin.flush().unwrap();
        let mut done = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut done,
        )
        .unwrap();
        assert_eq!(done.trim(), "held", "psql {sql} did not run");
        Held { child: Some(child) }
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The server log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// A transaction kept open by [`Postgres::hold`]; committed on release or drop.
pub struct Held {
    child: Option<std::process::Child>,
}

impl Held {
    /// Commits the transaction (releasing its locks) and waits for psql.
    pub fn release(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = writeln!(stdin, "COMMIT;");
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.finish();
    }
}
