//! SQL shared by the SQLite and PostgreSQL registries, written with `?N`
//! placeholders (SQLite's); the PostgreSQL registry rewrites them to `$N`
//! once (see `postgres::numbered`). Both stores keep the same tables, column
//! names and conditions, so a guarantee checked in one is checked in the other.

// Certificate look-ups (after `SELECT {COLUMNS} FROM certificates`); the
// `query_plans_use_indexes` test checks that none of them scans the table.
pub(super) const BY_SERIAL: &str = "WHERE serial = ?1";
pub(super) const LIVE_IN_LINEAGE: &str =
    "WHERE owner = ?1 AND lineage = ?2 AND state = 'active' AND lineage IS NOT NULL";
pub(super) const NEWEST_FIRST: &str = "ORDER BY issued_at DESC, serial LIMIT ?1";
pub(super) const EXPIRING_BEFORE: &str =
    "WHERE state = 'active' AND not_after < ?1 ORDER BY not_after LIMIT ?2";
pub(super) const RETIREMENT_CANDIDATES: &str = "WHERE state = 'superseded' AND retired_at IS NULL \
    AND label = ?1 AND (proven = 1 OR superseded_at < ?2) ORDER BY superseded_at LIMIT ?3";
pub(super) const OF_DEVICE: &str = "WHERE device_id = ?1 ORDER BY issued_at DESC, serial";
pub(super) const MARK_PREDECESSOR_PROVEN: &str = "UPDATE certificates SET proven = 1
    WHERE serial = (SELECT predecessor FROM certificates
                    WHERE serial = ?1 AND fingerprint = ?2 AND state = 'active')
      AND proven = 0 AND retired_at IS NULL";
pub(super) const COUNT_EXPIRING: &str =
    "SELECT COUNT(*) FROM certificates WHERE state = 'active' AND not_after <= ?1";

pub(super) const ROTATION_COLUMNS: &str =
    "client_id, serial, state, attempts, last_error, new_serial, \
    requested_at, updated_at, next_attempt_at";

pub(super) const COLUMNS: &str = "serial, fingerprint, label, subject, san, not_before, not_after, auth, \
                       predecessor, successor, state, issued_at, der, device_id, backend_ref, retired_at, proven, owner, lineage";

pub(super) const PENDING_COLUMNS: &str =
    "id, label, subject, requested_by, state, created_at, issued_serial";

pub(super) const DEVICE_COLUMNS: &str = "id, token_hash, label, thing_name, policy, state, created_at, \
    enrolled_at, cert_serial, cert_id, cert_fingerprint, cert_not_after, failed_attempts, locked_until, edge_ca";

// Writes and look-ups beside the certificate queries.
/// Supersedes an active certificate (?2) by ?1 at ?3.
pub(super) const SUPERSEDE: &str =
    "UPDATE certificates SET state = 'superseded', successor = ?1, superseded_at = ?3
                         WHERE serial = ?2 AND state = 'active'";
/// The device of a certificate.
pub(super) const DEVICE_OF: &str = "SELECT device_id FROM certificates WHERE serial = ?1";
/// Burns the token of a device still reserved by ?3.
pub(super) const ENROLL_CLAIMED: &str =
    "UPDATE devices SET state = 'enrolled', enrolled_at = ?1, lease_owner = NULL,
                             lease_until = NULL, failed_attempts = 0
                         WHERE id = ?2 AND state = 'unused' AND lease_owner = ?3";
/// Records a new, active certificate.
pub(super) const INSERT_CERTIFICATE: &str = "INSERT INTO certificates (serial, fingerprint, label, subject, san, not_before,
                     not_after, auth, predecessor, successor, state, issued_at, der, device_id,
                     backend_ref, owner, lineage)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, 'active', ?10, ?11, ?12, ?13, ?14, ?15)";
/// Points a device at its new certificate.
pub(super) const POINT_DEVICE: &str =
    "UPDATE devices SET cert_serial = ?1, cert_fingerprint = ?2, cert_not_after = ?3,
                         cert_id = COALESCE(?4, cert_id)
                     WHERE id = ?5";
/// Marks a pending request issued.
pub(super) const MARK_PENDING_ISSUED: &str =
    "UPDATE pending_requests SET state = 'issued', issued_serial = ?1 WHERE id = ?2";
/// Sets a device's Edge CA flag.
pub(super) const SET_EDGE_CA: &str = "UPDATE devices SET edge_ca = ?2 WHERE id = ?1";
/// Revokes a certificate.
pub(super) const REVOKE: &str =
    "UPDATE certificates SET state = 'revoked', revoked_at = COALESCE(revoked_at, ?2)
                     WHERE serial = ?1";
/// Records a retirement.
pub(super) const MARK_RETIRED: &str =
    "UPDATE certificates SET retired_at = ?1 WHERE serial = ?2 AND retired_at IS NULL";
/// What the local CA's CRL lists.
pub(super) const LOCAL_REVOCATIONS: &str =
    "SELECT serial, COALESCE(revoked_at, retired_at) FROM certificates
                     WHERE backend_ref IS NULL AND (state = 'revoked' OR retired_at IS NOT NULL)
                     ORDER BY serial";
/// Adds a pending request unless known.
pub(super) const ADD_PENDING: &str =
    "INSERT INTO pending_requests (id, label, subject, requested_by, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)
                 ON CONFLICT (id) DO NOTHING";
/// Decides a request still pending.
pub(super) const DECIDE_PENDING: &str =
    "UPDATE pending_requests SET state = ?1, decided_at = ?2 WHERE id = ?3 AND state = 'pending'";
/// Adds a device unless its id is known.
pub(super) const ADD_DEVICE: &str =
    "INSERT INTO devices (id, token_hash, label, thing_name, policy, state, created_at, edge_ca)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'unused', ?6, ?7)
                 ON CONFLICT (id) DO NOTHING";
/// Disables a device.
pub(super) const DISABLE_DEVICE: &str = "UPDATE devices SET state = 'disabled' WHERE id = ?1";
/// Counts a failed token attempt (in the row, so every server sees it).
/// A lock that has run out (`locked_until <= ?4`, now) ends the count too:
/// the failure is the first of a new series (SET sees the old row throughout).
pub(super) const FAILED_ATTEMPT: &str = "UPDATE devices SET
                     failed_attempts = CASE WHEN locked_until <= ?4 THEN 1 ELSE failed_attempts + 1 END,
                     locked_until = CASE
                         WHEN (CASE WHEN locked_until <= ?4 THEN 1 ELSE failed_attempts + 1 END) >= ?1 THEN ?2
                         WHEN locked_until <= ?4 THEN NULL
                         ELSE locked_until END
                 WHERE id = ?3";
/// Reserves an unused device whose token matches, unless reserved.
pub(super) const RESERVE_DEVICE: &str = "UPDATE devices SET lease_owner = ?1, lease_until = ?2
                     WHERE id = ?3 AND token_hash = ?4 AND state = 'unused'
                       AND (lease_until IS NULL OR lease_until < ?5)";
/// A device's state.
pub(super) const DEVICE_STATE: &str = "SELECT state FROM devices WHERE id = ?1";
/// Gives a reservation back.
pub(super) const RELEASE_DEVICE: &str =
    "UPDATE devices SET lease_owner = NULL, lease_until = NULL WHERE id = ?1 AND lease_owner = ?2";
/// Revokes a renewal being undone.
pub(super) const REVOKE_UNUSED_SUCCESSOR: &str =
    "UPDATE certificates SET state = 'revoked', revoked_at = ?2
                     WHERE serial = ?1 AND state = 'active' AND predecessor IS NOT NULL";
/// Makes a superseded, unproven predecessor active again.
pub(super) const REINSTATE: &str = "UPDATE certificates SET state = 'active', successor = NULL,
                         superseded_at = NULL, proven = 0
                     WHERE serial = ?1 AND state = 'superseded' AND successor = ?2
                       AND retired_at IS NULL AND proven = 0";
/// Points the device of ?2 back at ?1.
pub(super) const REPOINT_DEVICE: &str =
    "UPDATE devices SET (cert_serial, cert_fingerprint, cert_not_after, cert_id) =
                     (SELECT serial, fingerprint, not_after, COALESCE(backend_ref, devices.cert_id)
                      FROM certificates WHERE serial = ?1)
                 WHERE cert_serial = ?2";
/// Creates or replaces a rotation record.
pub(super) const SAVE_ROTATION: &str = "INSERT INTO rotations (client_id, serial, state, attempts,
        last_error, new_serial, requested_at, updated_at, next_attempt_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
    ON CONFLICT (client_id) DO UPDATE SET serial = excluded.serial, state = excluded.state,
        attempts = excluded.attempts, last_error = excluded.last_error,
        new_serial = excluded.new_serial, requested_at = excluded.requested_at,
        updated_at = excluded.updated_at, next_attempt_at = excluded.next_attempt_at";
/// Replaces a rotation record (?1–?9 as for [`SAVE_ROTATION`]) only while
/// it still holds the values read (?10–?17).
pub(super) const REPLACE_ROTATION: &str = "UPDATE rotations SET serial = ?2, state = ?3,
        attempts = ?4, last_error = ?5, new_serial = ?6, requested_at = ?7,
        updated_at = ?8, next_attempt_at = ?9
    WHERE client_id = ?1 AND serial = ?10 AND state = ?11 AND attempts = ?12
      AND (last_error = ?13 OR (last_error IS NULL AND ?13 IS NULL))
      AND (new_serial = ?14 OR (new_serial IS NULL AND ?14 IS NULL))
      AND requested_at = ?15 AND updated_at = ?16 AND next_attempt_at = ?17";
/// Takes or renews a lease: ?1 name, ?2 holder, ?3 new end, ?4 now.
pub(super) const ACQUIRE_LEASE: &str = "INSERT INTO leases (name, holder, expires_at)
    VALUES (?1, ?2, ?3)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE leases.holder = excluded.holder OR leases.expires_at < ?4";
/// Ends a lease held by ?2.
pub(super) const RELEASE_LEASE: &str = "DELETE FROM leases WHERE name = ?1 AND holder = ?2";
