//! Operator commands at their rough edges (issue 11): output into a closed
//! pipe, serial spellings, the `certs list` limit, the import progress bar,
//! and the registry's file modes.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use est_e2e::*;

/// The signal a write into a pipe without reader raises (Linux).
const SIGPIPE: i32 = 13;

fn enroll(server: &Server, work: &std::path::Path, cn: &str) -> std::path::PathBuf {
    let csr = Csr::new(work, cn, KeyType::P256, &format!("/CN={cn}"), &[]);
    let pem = work.join(format!("{cn}.pem"));
    enroll_basic(server, None, &csr, &pem);
    pem
}

/// `est-server certs list | head` and `devices show | head`: once the
/// reader has gone, the command ends quietly (SIGPIPE, as Unix tools do),
/// never with a panic and its backtrace.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    enroll(&server, work.path(), "piped");
    server.admin(&["devices", "add", "SN-PIPE"]);
    for args in [&["certs", "list"][..], &["devices", "show", "SN-PIPE"]] {
        // A pipe whose reader is gone before the first line is written.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = server
            .admin_command(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(output.status.signal(), Some(SIGPIPE), "{args:?}: {stderr}");
    }
    // And through a shell pipeline, as an operator types it.
    let pipeline = format!(
        "'{}' certs list --data-dir '{}' | head -1",
        server_binary().display(),
        server.dir.path().display()
    );
    let output = std::process::Command::new("sh")
        .args(["-c", &pipeline])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 1);
}

/// `certs revoke` takes the serial as openssl prints it (`serial=0A1B…`,
/// `0a:1b:…`), upper- or lower-case, with or without leading zeros.
#[test]
fn revoke_accepts_the_serial_in_any_spelling() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let first = enroll(&server, work.path(), "spelled-1");
    let second = enroll(&server, work.path(), "spelled-2");
    // `serial=0123ABCD…`, as `openssl x509 -serial` prints it.
    let printed = x509(&first, &["-serial"]).trim().to_owned();
    server.admin(&["certs", "revoke", &printed]);
    // `00:01:23:ab:…`, as in `openssl x509 -text`, with a leading zero byte.
    let hex = x509(&second, &["-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    let colons = std::iter::once("00".to_owned())
        .chain(
            hex.as_bytes()
                .chunks(2)
                .map(|pair| String::from_utf8(pair.to_vec()).unwrap()),
        )
        .collect::<Vec<_>>()
        .join(":");
    server.admin(&["certs", "revoke", &colons]);
    let listing = server.admin(&["certs", "list"]);
    assert_eq!(listing.matches("revoked").count(), 2, "{listing}");
    // Not hex at all: refused, nothing revoked.
    let output = server
        .admin_command(&["certs", "revoke", "not-a-serial"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a hex serial"));
}

/// `devices list` says on stderr when it stopped at its limit and how to
/// go on; following that hint lists the rest.
#[test]
fn devices_list_says_when_it_stops_and_pages_on() {
    let server = Server::start();
    for id in ["page-a", "page-b", "page-c"] {
        server.admin(&["devices", "add", id]);
    }
    let list = |args: &[&str]| {
        let output = server.admin_command(args).output().unwrap();
        assert!(output.status.success());
        (
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (all, notice) = list(&["devices", "list"]);
    assert!(!notice.contains("showing"), "{notice}");
    let ids: Vec<&str> = all.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(
        ids.len() >= 3 && ids.ends_with(&["page-a", "page-b", "page-c"]),
        "{all}"
    );
    let limit = (ids.len() - 1).to_string();
    let (rows, notice) = list(&["devices", "list", "--limit", &limit]);
    assert_eq!(rows.lines().count(), ids.len() - 1, "{rows}");
    assert!(
        notice.contains(&format!("showing {limit}; more with --after page-b")),
        "{notice}"
    );
    let (rows, notice) = list(&["devices", "list", "--limit", &limit, "--after", "page-b"]);
    assert!(
        rows.starts_with("page-c") && rows.lines().count() == 1,
        "{rows}"
    );
    assert!(!notice.contains("showing"), "{notice}");
}

/// `certs list` says on stderr when it stopped at its limit; `--limit N`
/// and `--all` choose how many.
#[test]
fn certs_list_says_when_it_stops_at_its_limit() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    for i in 0..3 {
        enroll(&server, work.path(), &format!("listed-{i}"));
    }
    let list = |args: &[&str]| {
        let output = server.admin_command(args).output().unwrap();
        assert!(output.status.success());
        (
            String::from_utf8(output.stdout).unwrap().lines().count(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (rows, notice) = list(&["certs", "list", "--limit", "2"]);
    assert_eq!(rows, 2);
    assert!(
        notice.contains("showing the newest 2; use --limit N or --all"),
        "{notice}"
    );
    for args in [
        &["certs", "list", "--all"][..],
        &["certs", "list"],
        &["certs", "list", "--limit", "3"],
    ] {
        let (rows, notice) = list(args);
        assert_eq!(rows, 3, "{args:?}");
        assert!(!notice.contains("showing"), "{args:?}: {notice}");
    }
}

/// Without a terminal on stderr, `devices import` draws no progress bar.
#[test]
fn import_draws_no_progress_bar_into_a_log() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("devices.csv");
    let rows: String = (0..6000).map(|i| format!("BAR-{i:05}\n")).collect();
    std::fs::write(&csv, rows).unwrap();
    let tokens = work.path().join("tokens.csv");
    let output = server
        .admin_command(&[
            "devices",
            "import",
            &csv.display().to_string(),
            "--tokens-out",
            &tokens.display().to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("imported 6000 devices"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains("devices") && !stderr.contains('#'),
        "{stderr:?}"
    );
}

/// The registry and its WAL and shared-memory files are the owner's only,
/// like the keys.
#[test]
fn registry_files_are_private() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    enroll(&server, work.path(), "private");
    for name in [
        "registry.sqlite",
        "registry.sqlite-wal",
        "registry.sqlite-shm",
    ] {
        let mode = std::fs::metadata(server.path(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {:o}", mode & 0o777);
    }
}
