//! Devices driven by the real est-client binary: enrollment, renewal
//! configs, daemons and checks on the installed pair.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{client_binary, config_with, est_client, x509, Server};

/// A label whose certificates live `validity` with no backdating.
pub fn short_config(validity: &str) -> String {
    config_with(&format!(
        "[profiles.short]\nvalidity = \"{validity}\"\nbackdate = \"0s\"\n[labels.short]\nprofile = \"short\"\n"
    ))
}

/// `--server` and `--trust` for est-client against `server`.
pub fn common<'a>(server: &'a Server, ca: &'a str) -> Vec<String> {
    vec![
        "--server".into(),
        format!(
            "https://localhost:{}",
            server.addr.rsplit(':').next().unwrap()
        ),
        "--trust".into(),
        ca.into(),
    ]
}

/// Enrolls `cn` with est-client (Basic estuser) into `dir`/device.pem + device.key.
pub fn enroll(server: &Server, dir: &Path, label: Option<&str>, cn: &str) {
    let ca = server.ca_pem().display().to_string();
    let mut args: Vec<String> = vec!["enroll".into()];
    args.extend(common(server, &ca));
    if let Some(label) = label {
        args.extend(["--label".into(), label.into()]);
    }
    args.extend([
        "--user".into(),
        "estuser".into(),
        "--cn".into(),
        cn.into(),
        "--dns".into(),
        format!("{cn}.example"),
        "--out".into(),
        dir.join("device.pem").display().to_string(),
        "--out-key".into(),
        dir.join("device.key").display().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = est_client(&refs, &[("EST_PASSWORD", "estpwd")]);
    assert_eq!(code, 0, "enroll: {out} {err}");
}

/// Writes `dir`/renew.toml for est-client against `server` on `label`, plus `extra` TOML.
pub fn renew_config(server: &Server, dir: &Path, label: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("renew.toml");
    std::fs::write(
        &path,
        format!(
            "server = \"https://localhost:{port}\"\nlabel = \"{label}\"\ntrust = [\"{ca}\"]\ncert = \"device.pem\"\nkey = \"device.key\"\n{extra}",
            port = server.addr.rsplit(':').next().unwrap(),
            ca = server.ca_pem().display()
        ),
    )
    .unwrap();
    path
}

/// `serial=…` of `dir`/device.pem.
pub fn serial(dir: &Path) -> String {
    x509(&dir.join("device.pem"), &["-serial"])
        .trim()
        .to_owned()
}

/// est-client status: `dir`/device.pem and device.key belong together.
pub fn status_ok(dir: &Path) -> bool {
    let (code, out, err) = est_client(
        &[
            "status",
            "--cert",
            &dir.join("device.pem").display().to_string(),
            "--key",
            &dir.join("device.key").display().to_string(),
        ],
        &[],
    );
    let ok = code == 0 && out.contains("belong together");
    if !ok {
        eprintln!("status: {code} {out} {err}");
    }
    ok
}

/// Starts `est-client renew --daemon --config <config>`, logging to `<config>.log`.
pub fn daemon(config: &Path) -> Child {
    Command::new(client_binary())
        .args([
            "renew",
            "--daemon",
            "--config",
            &config.display().to_string(),
        ])
        .env("EST_PASSWORD", "estpwd")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(config.with_extension("log")).unwrap())
        .spawn()
        .unwrap()
}

/// Polls `condition` every 200 ms for up to `limit`.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The rotation record of `client_id`, from `est-server rotations --json`.
pub fn rotation_of(server: &Server, client_id: &str) -> Option<serde_json::Value> {
    let listing: serde_json::Value =
        serde_json::from_str(&server.admin(&["rotations", "--json"])).unwrap();
    listing
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["clientId"] == client_id)
        .cloned()
}

/// The state of `client_id`'s rotation (`requested`, `issued`, …; empty when none).
pub fn rotation_state(server: &Server, client_id: &str) -> String {
    rotation_of(server, client_id)
        .and_then(|r| r["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
