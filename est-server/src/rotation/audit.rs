//! The expiry audit: which devices to ask for a new CSR now.
//!
//! Pure selection over registry records, so the scheduled audit in `serve`
//! and the on-demand `est-server rotate` decide the same way.

use std::collections::HashMap;
use std::time::Duration;

use crate::registry::{CertificateRecord, Rotation, RotationState};

/// Longest wait between two requests to one device.
const MAX_BACKOFF: Duration = Duration::from_secs(86_400);

/// What the audit does about one expiring certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish `csr_req`; this is the `attempt`-th request for this certificate.
    Ask {
        /// MQTT client id (the certificate's CN).
        client_id: String,
        /// 1 for the first request.
        attempt: u32,
    },
    /// Asked recently; wait until the back-off has passed.
    BackingOff(String),
    /// The certificate has no usable client id (no CN, or MQTT wildcards in it).
    NoClientId(String),
    /// The certificate has already expired: the device cannot reach the
    /// broker with it, so only its bootstrap credentials can help.
    Expired(String),
}

/// Requests a device may leave unanswered before it counts as offline and
/// stops holding one of the `max_in_flight` slots.
pub const OFFLINE_AFTER_ATTEMPTS: u32 = 3;

/// The client id of a recorded certificate: its subject CN, when that can
/// be one MQTT topic level.
pub fn client_id_of(record: &CertificateRecord) -> Option<String> {
    let certificate = est_wire::pem::certificate_from_der(&record.certificate.der).ok()?;
    est_wire::csr::common_name(&certificate.tbs_certificate.subject)
        .filter(|cn| est_wire::rotation::valid_client_id(cn))
}

/// Decides for one active certificate expiring within the window. `force`
/// ignores the back-off (an operator asked for this device).
pub fn decide(
    record: &CertificateRecord,
    rotations: &HashMap<String, Rotation>,
    now: i64,
    force: bool,
) -> Decision {
    let Some(client_id) = client_id_of(record) else {
        return Decision::NoClientId(record.certificate.serial.clone());
    };
    if record.certificate.not_after <= now {
        return Decision::Expired(client_id);
    }
    match rotations.get(&client_id) {
        // This certificate is the successor an unfinished rotation is still
        // delivering (sent, not yet acknowledged): that rotation goes on
        // (its crt_res is sent again); a new one would overwrite it.
        Some(rotation)
            if rotation.state == RotationState::Issued
                && rotation.new_serial.as_deref() == Some(record.certificate.serial.as_str()) =>
        {
            Decision::BackingOff(client_id)
        }
        Some(rotation) if rotation.serial == record.certificate.serial => {
            if rotation.next_attempt_at > now && !force {
                Decision::BackingOff(client_id)
            } else {
                Decision::Ask {
                    client_id,
                    attempt: rotation.attempts + 1,
                }
            }
        }
        _ => Decision::Ask {
            client_id,
            attempt: 1,
        },
    }
}

/// When the device may be asked again after the `attempt`-th request:
/// `retry_after` doubled per earlier attempt, at most a day.
pub fn next_attempt_at(now: i64, attempt: u32, retry_after: Duration) -> i64 {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    let wait = retry_after.saturating_mul(factor).min(MAX_BACKOFF);
    now + wait.as_secs().max(1) as i64
}

/// Rotations waiting on a device right now (bounded by `max_in_flight`).
/// Devices that left [`OFFLINE_AFTER_ATTEMPTS`] requests unanswered are
/// still asked after their back-off but hold no slot, so a set of dead
/// devices cannot starve the live ones.
pub fn in_flight(rotations: &HashMap<String, Rotation>, now: i64) -> usize {
    rotations
        .values()
        .filter(|r| {
            matches!(r.state, RotationState::Requested | RotationState::Issued)
                && r.next_attempt_at > now
                && r.attempts <= OFFLINE_AFTER_ATTEMPTS
        })
        .count()
}

/// Issued rotations whose device has not acknowledged in time: their
/// `crt_res` is sent again.
pub fn unacknowledged(rotations: &HashMap<String, Rotation>, now: i64) -> Vec<Rotation> {
    rotations
        .values()
        .filter(|r| r.state == RotationState::Issued && r.next_attempt_at <= now)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(serial: &str, state: RotationState, attempts: u32, next: i64) -> Rotation {
        Rotation {
            client_id: "dev".into(),
            serial: serial.into(),
            state,
            attempts,
            last_error: None,
            new_serial: None,
            requested_at: 0,
            updated_at: 0,
            next_attempt_at: next,
        }
    }

    #[test]
    fn back_off_doubles_and_is_capped() {
        let hour = Duration::from_secs(3_600);
        assert_eq!(next_attempt_at(0, 1, hour), 3_600);
        assert_eq!(next_attempt_at(0, 2, hour), 7_200);
        assert_eq!(next_attempt_at(0, 3, hour), 14_400);
        assert_eq!(next_attempt_at(0, 40, hour), 86_400);
    }

    #[test]
    fn in_flight_and_unacknowledged_count_only_waiting_rotations() {
        let mut all = HashMap::new();
        all.insert("a".into(), rotation("1", RotationState::Requested, 1, 100));
        all.insert("b".into(), rotation("2", RotationState::Issued, 1, 100));
        all.insert("c".into(), rotation("3", RotationState::Issued, 1, 10));
        all.insert("d".into(), rotation("4", RotationState::Failed, 1, 100));
        all.insert(
            "e".into(),
            rotation("5", RotationState::Acknowledged, 1, 100),
        );
        assert_eq!(in_flight(&all, 50), 2);
        let late = unacknowledged(&all, 50);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].serial, "3");
    }
}
