//! A real SoftHSM2 token in a temporary directory, for the PKCS#11 signer.
//!
//! Each [`SoftHsm`] has its own `softhsm2.conf` (`directories.tokendir`
//! inside the temp dir), so tests never touch the machine's tokens. Every
//! process that should see the token needs [`SoftHsm::env`].

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SoftHSM2 PKCS#11 module as Debian installs it.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 configuration with one initialised token.
pub struct SoftHsm {
    /// Holds the config and the token directory.
    pub dir: tempfile::TempDir,
    /// Token label.
    pub label: String,
    /// User PIN.
    pub pin: String,
}

impl SoftHsm {
    /// Makes a token labelled `label` with user PIN `pin`.
    pub fn new(label: &str, pin: &str) -> Self {
        assert!(
            Path::new(MODULE).exists(),
            "softhsm2 is needed for this test (run-tests.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        let hsm = Self {
            dir,
            label: label.to_owned(),
            pin: pin.to_owned(),
        };
        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label, "--pin", pin])
            .args(["--so-pin", "so-pin-1234"])
            .env("SOFTHSM2_CONF", hsm.conf())
            .output()
            .expect("softhsm2-util");
        assert!(
            output.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        hsm
    }

    /// The `softhsm2.conf` path.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// `SOFTHSM2_CONF` and the PIN variable the signer config names (`EST_HSM_PIN`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOFTHSM2_CONF", self.conf().display().to_string()),
            ("EST_HSM_PIN", self.pin.clone()),
        ]
    }

    /// A `[ca.signer]` table for key `key_label` in this token (PIN from `EST_HSM_PIN`).
    pub fn signer_toml(&self, section: &str, key_label: &str) -> String {
        format!(
            "[{section}.signer]\nkind = \"pkcs11\"\nmodule = \"{MODULE}\"\ntoken_label = \"{}\"\nkey_label = \"{key_label}\"\npin_env = \"EST_HSM_PIN\"\n",
            self.label
        )
    }
}
