//! One conformance suite for every registry implementation: SQLite (a real
//! file) and DynamoDB (a real moto server). The invariants — one renewal per
//! certificate, one certificate per token, conditional transitions — must hold
//! on both.

use std::sync::Arc;

use est_e2e::{Moto, Postgres};
use est_server::registry::*;

fn cert(label: &str, serial: &str, predecessor: Option<&str>) -> NewCertificate {
    NewCertificate {
        serial: serial.into(),
        fingerprint: format!("fp-{serial}"),
        label: label.into(),
        subject: format!("CN=dev-{serial}"),
        san: String::new(),
        not_before: 0,
        not_after: 1_000 + serial.len() as i64,
        auth: "basic:estuser".into(),
        predecessor: predecessor.map(str::to_owned),
        device_id: None,
        backend_ref: Some(format!("aws-{serial}")),
        owner: None,
        lineage: None,
        der: vec![0x30, 0x00],
    }
}

fn device(label: &str, id: &str, hash: &str) -> NewDevice {
    NewDevice {
        id: id.into(),
        token_hash: hash.into(),
        label: label.into(),
        thing_name: Some(format!("thing-{id}")),
        policy: None,
        edge_ca: false,
    }
}

/// After a lock has run out, counting starts again from zero: one more
/// wrong token does not lock the device for a whole period again.
async fn lockout_ends_cleanly(registry: &dyn Registry) {
    assert_eq!(
        registry
            .add_devices(vec![device("lbl", "SN-LOCK", "h")])
            .await
            .unwrap(),
        [true]
    );
    let locked = |d: &Device| d.locked_until.is_some_and(|until| until > unix_now());
    // Three failures lock it; the lock (of -1 s) has already run out.
    for _ in 0..3 {
        registry
            .record_failed_attempt("SN-LOCK", 3, -1)
            .await
            .unwrap();
    }
    let d = registry.device("SN-LOCK").await.unwrap().unwrap();
    assert_eq!(d.failed_attempts, 3);
    assert!(d.locked_until.is_some() && !locked(&d), "{d:?}");
    registry
        .record_failed_attempt("SN-LOCK", 3, 300)
        .await
        .unwrap();
    let d = registry.device("SN-LOCK").await.unwrap().unwrap();
    assert_eq!(d.failed_attempts, 1, "a new series");
    assert!(!locked(&d), "{d:?}");
    for _ in 0..2 {
        registry
            .record_failed_attempt("SN-LOCK", 3, 300)
            .await
            .unwrap();
    }
    let d = registry.device("SN-LOCK").await.unwrap().unwrap();
    assert_eq!(d.failed_attempts, 3);
    assert!(
        locked(&d),
        "the third failure of the new series locks: {d:?}"
    );
}

async fn suite(registry: Arc<dyn Registry>, label: &'static str) {
    // Renewal supersedes exactly once.
    registry
        .record_issued(cert(label, "01", None), None, None, None)
        .await
        .unwrap();
    registry
        .record_issued(cert(label, "02", Some("01")), Some("01".into()), None, None)
        .await
        .unwrap();
    let second = registry
        .record_issued(cert(label, "03", Some("01")), Some("01".into()), None, None)
        .await;
    assert!(
        matches!(second, Err(RegistryError::PredecessorNotActive(_))),
        "{second:?}"
    );
    assert!(registry.find_by_serial("03").await.unwrap().is_none());
    let old = registry
        .find_presented("01", "fp-01")
        .await
        .unwrap()
        .unwrap();
    assert!(
        registry
            .find_presented("01", "fp-other-issuer")
            .await
            .unwrap()
            .is_none(),
        "same serial, different certificate"
    );
    assert_eq!(old.state, CertState::Superseded);
    assert_eq!(old.successor.as_deref(), Some("02"));
    assert_eq!(old.certificate.backend_ref.as_deref(), Some("aws-01"));

    // Retirement: candidates after proof, then retired.
    assert!(
        registry
            .retirement_candidates(label, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "not proven, within grace"
    );
    registry
        .mark_predecessor_proven("02", "fp-forged")
        .await
        .unwrap();
    assert!(
        registry
            .retirement_candidates(label, 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "a fingerprint that does not match proves nothing"
    );
    registry
        .mark_predecessor_proven("02", "fp-02")
        .await
        .unwrap();
    let candidates = registry.retirement_candidates(label, 0, 10).await.unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].certificate.serial, "01");
    registry.mark_retired("01").await.unwrap();
    assert!(registry
        .retirement_candidates(label, i64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(registry
        .find_by_serial("01")
        .await
        .unwrap()
        .unwrap()
        .retired_at
        .is_some());

    // Expiry audit: active only, soonest first.
    let expiring = registry.expiring_before(10_000, 10).await.unwrap();
    assert_eq!(
        expiring
            .iter()
            .map(|r| r.certificate.serial.as_str())
            .collect::<Vec<_>>(),
        vec!["02"]
    );
    registry.revoke("02").await.unwrap();
    assert!(registry
        .expiring_before(10_000, 10)
        .await
        .unwrap()
        .is_empty());

    // Devices: one token, one certificate, under concurrency.
    let added = registry
        .add_devices(vec![
            device(label, "SN1", "h1"),
            device(label, "SN1", "other"),
        ])
        .await
        .unwrap();
    assert_eq!(added, vec![true, false]);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let registry = registry.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("req-{i}");
            registry
                .reserve_device("SN1", "h1", &owner, unix_now() + 60)
                .await?;
            registry
                .record_issued(
                    cert(label, &format!("a{i:02}"), None),
                    None,
                    None,
                    Some(DeviceClaim {
                        device_id: "SN1".into(),
                        owner,
                        cert_id: Some("cid".into()),
                    }),
                )
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "exactly one request redeems the token");
    let d = registry.device("SN1").await.unwrap().unwrap();
    assert_eq!(d.state, DeviceState::Enrolled);
    assert_eq!(d.cert_id.as_deref(), Some("cid"));
    assert_eq!(d.device.thing_name.as_deref(), Some("thing-SN1"));
    let history = registry.device_certificates("SN1").await.unwrap();
    assert_eq!(history.len(), 1);
    assert!(matches!(
        registry
            .reserve_device("SN1", "h1", "late", unix_now() + 60)
            .await,
        Err(RegistryError::TokenUsed(_))
    ));
    // A renewal of a device certificate stays on the device.
    let first = history[0].certificate.serial.clone();
    registry
        .record_issued(
            cert(label, "b01", Some(&first)),
            Some(first.clone()),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(registry.device_certificates("SN1").await.unwrap().len(), 2);
    assert_eq!(
        registry
            .device("SN1")
            .await
            .unwrap()
            .unwrap()
            .cert_serial
            .as_deref(),
        Some("b01")
    );

    // Reservations: busy, released, expired and taken over, lost.
    registry
        .add_devices(vec![device(label, "SN2", "h2")])
        .await
        .unwrap();
    assert!(matches!(
        registry
            .reserve_device("SN2", "wrong", "a", unix_now() + 60)
            .await,
        Err(RegistryError::DeviceBusy(_))
    ));
    registry
        .reserve_device("SN2", "h2", "a", unix_now() + 60)
        .await
        .unwrap();
    assert!(matches!(
        registry
            .reserve_device("SN2", "h2", "b", unix_now() + 60)
            .await,
        Err(RegistryError::DeviceBusy(_))
    ));
    registry.release_device("SN2", "a").await.unwrap();
    registry
        .reserve_device("SN2", "h2", "b", unix_now() - 1)
        .await
        .unwrap();
    registry
        .reserve_device("SN2", "h2", "c", unix_now() + 60)
        .await
        .unwrap();
    let lost = registry
        .record_issued(
            cert(label, "c01", None),
            None,
            None,
            Some(DeviceClaim {
                device_id: "SN2".into(),
                owner: "b".into(),
                cert_id: None,
            }),
        )
        .await;
    assert!(
        matches!(lost, Err(RegistryError::ReservationLost(_))),
        "{lost:?}"
    );
    assert!(registry.find_by_serial("c01").await.unwrap().is_none());
    for _ in 0..3 {
        registry.record_failed_attempt("SN2", 3, 300).await.unwrap();
    }
    let d = registry.device("SN2").await.unwrap().unwrap();
    assert_eq!(d.failed_attempts, 3);
    assert!(d.locked_until.unwrap() > unix_now());
    registry.disable_device("SN2").await.unwrap();
    assert!(matches!(
        registry
            .reserve_device("SN2", "h2", "d", unix_now() + 60)
            .await,
        Err(RegistryError::DeviceDisabled(_))
    ));
    let listed = registry.list_devices(None, 10).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|d| d.device.id.as_str())
            .collect::<Vec<_>>(),
        vec!["SN1", "SN2"]
    );
    assert_eq!(
        registry
            .list_devices(Some("SN1".into()), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Pending approvals.
    let request = PendingRequest {
        id: "p1".into(),
        label: label.into(),
        subject: "CN=x".into(),
        requested_by: "basic:u".into(),
        state: PendingState::Pending,
        created_at: 1,
        issued_serial: None,
    };
    registry.add_pending(request.clone()).await.unwrap();
    registry.add_pending(request).await.unwrap();
    assert_eq!(registry.list_pending().await.unwrap().len(), 1);
    registry.decide_pending("p1", true).await.unwrap();
    assert!(registry.decide_pending("p1", false).await.is_err());
    registry
        .record_issued(cert(label, "d01", None), None, Some("p1".into()), None)
        .await
        .unwrap();
    let done = registry.pending("p1").await.unwrap().unwrap();
    assert_eq!(done.state, PendingState::Issued);
    assert_eq!(done.issued_serial.as_deref(), Some("d01"));
    assert!(registry.list_certificates(100).await.unwrap().len() >= 5);

    // A renewal the device refused (MQTT crt_err) is undone: the successor
    // is revoked, the predecessor active again — once.
    let ending = |at: i64| {
        let registry = registry.clone();
        async move { registry.count_expiring_before(at).await.unwrap() }
    };
    let before = ending(99_999).await;
    let mut r1 = cert(label, "r1", None);
    r1.not_after = 50_000;
    registry.record_issued(r1, None, None, None).await.unwrap();
    let mut r2 = cert(label, "r2", Some("r1"));
    r2.not_after = 60_000;
    registry
        .record_issued(r2, Some("r1".into()), None, None)
        .await
        .unwrap();
    assert_eq!(
        ending(60_000).await - ending(59_999).await,
        1,
        "inclusive bound"
    );
    assert_eq!(ending(99_999).await, before + 1);
    registry.reinstate_predecessor("r1", "r2").await.unwrap();
    let r1 = registry.find_by_serial("r1").await.unwrap().unwrap();
    assert_eq!(r1.state, CertState::Active);
    assert_eq!(r1.successor, None);
    let r2 = registry.find_by_serial("r2").await.unwrap().unwrap();
    assert_eq!(r2.state, CertState::Revoked);
    assert_eq!(ending(50_000).await - ending(49_999).await, 1);
    assert_eq!(ending(60_000).await - ending(59_999).await, 0);
    assert!(matches!(
        registry.reinstate_predecessor("r1", "r2").await,
        Err(RegistryError::PredecessorNotActive(_))
    ));

    // With a device: it points back at the reinstated certificate. Once the
    // successor has been used, nothing can be undone.
    registry
        .add_devices(vec![device(label, "SN-R", "hr")])
        .await
        .unwrap();
    registry
        .reserve_device("SN-R", "hr", "own", unix_now() + 60)
        .await
        .unwrap();
    let claim = DeviceClaim {
        device_id: "SN-R".into(),
        owner: "own".into(),
        cert_id: None,
    };
    registry
        .record_issued(cert(label, "s1", None), None, None, Some(claim))
        .await
        .unwrap();
    registry
        .record_issued(cert(label, "s2", Some("s1")), Some("s1".into()), None, None)
        .await
        .unwrap();
    let cert_of = |id: &'static str| {
        let registry = registry.clone();
        async move { registry.device(id).await.unwrap().unwrap().cert_serial }
    };
    assert_eq!(cert_of("SN-R").await.as_deref(), Some("s2"));
    registry.reinstate_predecessor("s1", "s2").await.unwrap();
    assert_eq!(cert_of("SN-R").await.as_deref(), Some("s1"));
    registry
        .record_issued(cert(label, "s3", Some("s1")), Some("s1".into()), None, None)
        .await
        .unwrap();
    registry
        .mark_predecessor_proven("s3", "fp-s3")
        .await
        .unwrap();
    assert!(matches!(
        registry.reinstate_predecessor("s1", "s3").await,
        Err(RegistryError::PredecessorNotActive(_))
    ));
    assert_eq!(
        registry.find_by_serial("s3").await.unwrap().unwrap().state,
        CertState::Active
    );

    // Rotation records: create, replace, list in client id order.
    assert!(registry.rotation("dev-b").await.unwrap().is_none());
    let mut rotation = Rotation {
        client_id: "dev-b".into(),
        serial: "r1".into(),
        state: RotationState::Requested,
        attempts: 1,
        last_error: None,
        new_serial: None,
        requested_at: 10,
        updated_at: 10,
        next_attempt_at: 20,
    };
    registry.save_rotation(rotation.clone()).await.unwrap();
    rotation.state = RotationState::Failed;
    rotation.last_error = Some("device said no".into());
    rotation.new_serial = Some("r2".into());
    registry.save_rotation(rotation.clone()).await.unwrap();
    registry
        .save_rotation(Rotation {
            client_id: "dev-a".into(),
            ..rotation.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        registry.rotation("dev-b").await.unwrap(),
        Some(rotation.clone())
    );

    // A conditional replacement writes only over the record as read: two
    // servers handling one device message cannot undo each other.
    let read = rotation.clone();
    let issued = Rotation {
        state: RotationState::Issued,
        last_error: None,
        new_serial: Some("r3".into()),
        updated_at: 11,
        ..read.clone()
    };
    assert!(registry
        .replace_rotation(&read, issued.clone())
        .await
        .unwrap());
    let stale = Rotation {
        last_error: Some("lost a race".into()),
        ..read.clone()
    };
    assert!(!registry.replace_rotation(&read, stale).await.unwrap());
    assert_eq!(
        registry.rotation("dev-b").await.unwrap(),
        Some(issued.clone())
    );
    // Absent fields compare too (none → some, some → none), and a record
    // that does not exist is never created.
    let acknowledged = Rotation {
        state: RotationState::Acknowledged,
        updated_at: 12,
        ..issued.clone()
    };
    assert!(!registry
        .replace_rotation(
            &Rotation {
                new_serial: None,
                ..issued.clone()
            },
            acknowledged.clone()
        )
        .await
        .unwrap());
    assert!(registry
        .replace_rotation(&issued, acknowledged.clone())
        .await
        .unwrap());
    let requested = Rotation {
        serial: "r3".into(),
        state: RotationState::Requested,
        new_serial: None,
        last_error: None,
        updated_at: 13,
        ..acknowledged.clone()
    };
    assert!(registry
        .replace_rotation(&acknowledged, requested.clone())
        .await
        .unwrap());
    assert!(!registry
        .replace_rotation(
            &Rotation {
                last_error: Some("x".into()),
                ..requested.clone()
            },
            rotation.clone()
        )
        .await
        .unwrap());
    assert!(!registry
        .replace_rotation(
            &Rotation {
                client_id: "dev-none".into(),
                ..requested.clone()
            },
            Rotation {
                client_id: "dev-none".into(),
                ..requested.clone()
            }
        )
        .await
        .unwrap());
    assert!(registry.rotation("dev-none").await.unwrap().is_none());
    registry.save_rotation(rotation.clone()).await.unwrap();
    let all = registry.list_rotations(10).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.client_id.as_str()).collect::<Vec<_>>(),
        ["dev-a", "dev-b"]
    );

    // "Everything" is asked as usize::MAX (the audit, `est-server
    // rotations`, the metrics): every listing takes it.
    assert_eq!(registry.list_rotations(usize::MAX).await.unwrap(), all);
    assert_eq!(
        registry.list_certificates(usize::MAX).await.unwrap().len(),
        registry.list_certificates(1_000).await.unwrap().len()
    );
    assert_eq!(
        registry.list_devices(None, usize::MAX).await.unwrap().len(),
        registry.list_devices(None, 1_000).await.unwrap().len()
    );
    registry
        .expiring_before(i64::MAX, usize::MAX)
        .await
        .unwrap();
    registry
        .retirement_candidates(label, i64::MAX, usize::MAX)
        .await
        .unwrap();

    // What the local CA's CRL lists: its own (no backend id) revoked and
    // retired certificates, with when; never another backend's.
    let local = |serial: &str| NewCertificate {
        backend_ref: None,
        ..cert(label, serial, None)
    };
    registry
        .record_issued(local("v1"), None, None, None)
        .await
        .unwrap();
    registry
        .record_issued(local("v2"), None, None, None)
        .await
        .unwrap();
    registry
        .record_issued(local("v3"), None, None, None)
        .await
        .unwrap();
    registry.revoke("v1").await.unwrap();
    registry.mark_retired("v2").await.unwrap();
    let revoked = registry.local_revocations().await.unwrap();
    let listed = |serial: &str| revoked.iter().find(|(s, _)| s == serial).map(|(_, at)| *at);
    assert!(listed("v1").is_some_and(|at| at > 0), "{revoked:?}");
    assert!(listed("v2").is_some_and(|at| at > 0), "{revoked:?}");
    assert!(listed("v3").is_none(), "active: {revoked:?}");
    assert!(listed("01").is_none(), "retired, but AWS's: {revoked:?}");
    assert!(listed("02").is_none(), "revoked, but AWS's: {revoked:?}");

    lockout_ends_cleanly(&*registry).await;
}

fn of_lineage(
    label: &str,
    serial: &str,
    owner: &str,
    lineage: &str,
    predecessor: Option<&str>,
) -> NewCertificate {
    NewCertificate {
        owner: Some(owner.into()),
        lineage: Some(lineage.into()),
        backend_ref: None,
        ..cert(label, serial, predecessor)
    }
}

/// One live certificate per lineage, kept by the store itself: a second
/// first certificate is refused, a renewal replaces exactly its own lineage's
/// certificate, concurrent first certificates yield one, and revocation and
/// reinstatement move the lineage's live certificate as they should.
async fn lineage_suite(registry: Arc<dyn Registry>, label: &'static str) {
    let record = |c: NewCertificate, supersedes: Option<&str>| {
        let registry = registry.clone();
        let supersedes = supersedes.map(str::to_owned);
        async move { registry.record_issued(c, supersedes, None, None).await }
    };
    record(of_lineage(label, "la", "device:edge", "est-id", None), None)
        .await
        .unwrap();
    record(
        of_lineage(label, "lb", "device:edge", "device-id", None),
        None,
    )
    .await
    .unwrap();
    record(
        of_lineage(label, "lx", "device:other", "est-id", None),
        None,
    )
    .await
    .unwrap();
    let live = |owner: &'static str, lineage: &'static str| {
        let registry = registry.clone();
        async move {
            registry
                .live_in_lineage(owner, lineage)
                .await
                .unwrap()
                .map(|r| r.certificate.serial)
        }
    };
    assert_eq!(live("device:edge", "est-id").await.as_deref(), Some("la"));
    assert_eq!(
        live("device:edge", "device-id").await.as_deref(),
        Some("lb")
    );
    assert_eq!(live("device:other", "est-id").await.as_deref(), Some("lx"));
    assert_eq!(live("device:edge", "edge-ca").await, None);

    // A second first certificate of a live lineage is refused, nothing recorded.
    let twice = record(of_lineage(label, "lc", "device:edge", "est-id", None), None).await;
    assert!(
        matches!(twice, Err(RegistryError::LineageBusy)),
        "{twice:?}"
    );
    assert!(registry.find_by_serial("lc").await.unwrap().is_none());
    // A renewal replaces its own lineage's certificate and no other.
    record(
        of_lineage(label, "lc", "device:edge", "est-id", Some("la")),
        Some("la"),
    )
    .await
    .unwrap();
    assert_eq!(live("device:edge", "est-id").await.as_deref(), Some("lc"));
    let state = |serial: &'static str| {
        let registry = registry.clone();
        async move {
            registry
                .find_by_serial(serial)
                .await
                .unwrap()
                .unwrap()
                .state
        }
    };
    assert_eq!(state("la").await, CertState::Superseded);
    assert_eq!(state("lb").await, CertState::Active);
    assert_eq!(state("lx").await, CertState::Active);
    let again = record(
        of_lineage(label, "ld", "device:edge", "est-id", Some("la")),
        Some("la"),
    )
    .await;
    assert!(
        matches!(again, Err(RegistryError::PredecessorNotActive(_))),
        "{again:?}"
    );

    // Concurrent first certificates of one new lineage: exactly one.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let registry = registry.clone();
        tasks.spawn(async move {
            registry
                .record_issued(
                    of_lineage(label, &format!("le{i:02}"), "device:edge", "edge-ca", None),
                    None,
                    None,
                    None,
                )
                .await
        });
    }
    let mut won = 0;
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            Ok(()) => won += 1,
            Err(RegistryError::LineageBusy) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(won, 1);

    // Revoked: the lineage has no live certificate and may start again.
    registry.revoke("lc").await.unwrap();
    assert_eq!(live("device:edge", "est-id").await, None);
    record(of_lineage(label, "lf", "device:edge", "est-id", None), None)
        .await
        .unwrap();
    // Renewed, then the renewal undone: the predecessor is live again and
    // can be renewed once more.
    record(
        of_lineage(label, "lg", "device:edge", "est-id", Some("lf")),
        Some("lf"),
    )
    .await
    .unwrap();
    registry.reinstate_predecessor("lf", "lg").await.unwrap();
    assert_eq!(live("device:edge", "est-id").await.as_deref(), Some("lf"));
    record(
        of_lineage(label, "lh", "device:edge", "est-id", Some("lf")),
        Some("lf"),
    )
    .await
    .unwrap();
    assert_eq!(live("device:edge", "est-id").await.as_deref(), Some("lh"));

    // A certificate recorded before lineages (no owner, no lineage) is
    // replaced by the first certificate that carries one.
    record(cert(label, "lk", None), None).await.unwrap();
    record(
        of_lineage(label, "ll", "cert:lk", "basic-line", Some("lk")),
        Some("lk"),
    )
    .await
    .unwrap();
    assert_eq!(state("lk").await, CertState::Superseded);
    assert_eq!(live("cert:lk", "basic-line").await.as_deref(), Some("ll"));

    // The Edge CA flag of a device.
    registry
        .add_devices(vec![NewDevice {
            edge_ca: true,
            ..device(label, "edge-flag", "h")
        }])
        .await
        .unwrap();
    assert!(
        registry
            .device("edge-flag")
            .await
            .unwrap()
            .unwrap()
            .device
            .edge_ca
    );
    registry
        .set_device_edge_ca("edge-flag", false)
        .await
        .unwrap();
    assert!(
        !registry
            .device("edge-flag")
            .await
            .unwrap()
            .unwrap()
            .device
            .edge_ca
    );
    assert!(matches!(
        registry.set_device_edge_ca("no-such-device", true).await,
        Err(RegistryError::NotFound(_))
    ));
}

/// Leases: one holder at a time, renewed by its holder, taken over once
/// expired, given back on release; of many concurrent takers exactly one wins.
async fn lease_suite(registry: Arc<dyn Registry>) {
    let now = unix_now();
    assert!(registry.acquire_lease("orch", "a", now + 60).await.unwrap());
    assert!(!registry.acquire_lease("orch", "b", now + 60).await.unwrap());
    assert!(
        registry
            .acquire_lease("orch", "a", now + 120)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(
        registry
            .acquire_lease("other", "b", now + 60)
            .await
            .unwrap(),
        "leases are independent"
    );
    registry.release_lease("orch", "b").await.unwrap();
    assert!(
        !registry.acquire_lease("orch", "b", now + 60).await.unwrap(),
        "only the holder releases"
    );
    registry.release_lease("orch", "a").await.unwrap();
    assert!(
        registry.acquire_lease("orch", "b", now - 1).await.unwrap(),
        "released: taken at once"
    );
    // b's lease has ended: the next taker wins, and b cannot take it back.
    assert!(
        registry.acquire_lease("orch", "c", now + 60).await.unwrap(),
        "expired: taken over"
    );
    assert!(!registry.acquire_lease("orch", "b", now + 60).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let registry = registry.clone();
        tasks.spawn(async move {
            registry
                .acquire_lease("race", &format!("h{i}"), unix_now() + 60)
                .await
                .unwrap()
        });
    }
    let mut won = 0;
    while let Some(outcome) = tasks.join_next().await {
        won += usize::from(outcome.unwrap());
    }
    assert_eq!(won, 1, "one holder");
}

/// The labels every suite runs on: the unlabelled path (`""`, which
/// DynamoDB refuses in index keys unless the registry keys it otherwise) and
/// a named one.
const LABELS: [&str; 2] = ["", "lbl"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_registry_conformance() {
    let dir = tempfile::tempdir().unwrap();
    for (i, label) in LABELS.into_iter().enumerate() {
        let path = dir.path().join(format!("registry-{i}.sqlite"));
        let registry = Arc::new(SqliteRegistry::open(&path).unwrap());
        suite(registry.clone(), label).await;
        lineage_suite(registry.clone(), label).await;
        lease_suite(registry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_registry_conformance() {
    let moto = Moto::start();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    for (i, label) in LABELS.into_iter().enumerate() {
        let registry = DynamoDbRegistry::new(&sdk, format!("conformance-{i}"));
        registry.create_table().await.unwrap();
        registry.create_table().await.unwrap();
        let registry = Arc::new(registry);
        suite(registry.clone(), label).await;
        lineage_suite(registry.clone(), label).await;
        lease_suite(registry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_registry_conformance() {
    let pg = Postgres::start();
    for (i, label) in LABELS.into_iter().enumerate() {
        let url = pg.create_database(&format!("conformance{i}"));
        let options = PostgresOptions::from_url(&url).unwrap();
        let registry = Arc::new(PostgresRegistry::open(options.clone()).await.unwrap());
        // Opening again (another server) finds the schema current.
        PostgresRegistry::open(options).await.unwrap();
        suite(registry.clone(), label).await;
        lineage_suite(registry.clone(), label).await;
        lease_suite(registry).await;
    }
}

/// The schema is versioned: a fresh database is migrated to the current
/// version, migrating again changes nothing, and a server refuses a database
/// whose schema is newer than it knows, with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_versions() {
    let pg = Postgres::start();
    let url = pg.create_database("versions");
    let options = PostgresOptions::from_url(&url).unwrap();
    let registry = PostgresRegistry::connect(options.clone()).unwrap();
    assert_eq!(registry.schema_version().await.unwrap(), 0);
    let known = est_server::registry::postgres::SCHEMA_VERSION;
    assert_eq!(registry.migrate().await.unwrap(), (0, known));
    assert_eq!(registry.migrate().await.unwrap(), (known, known));
    pg.psql(
        "versions",
        "UPDATE schema_version SET version = version + 1",
    );
    let refused = PostgresRegistry::open(options).await.unwrap_err();
    assert!(
        matches!(refused, RegistryError::SchemaTooNew { found, known: k } if found == known + 1 && k == known),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("newer than this server knows"),
        "{refused}"
    );
}

/// A database that cannot be reached is `Unavailable` (the enrollment
/// answers 503), not a generic failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_unavailable() {
    let port = est_e2e::Mosquitto::free_port();
    let mut options =
        PostgresOptions::from_url(&format!("postgres://postgres@127.0.0.1:{port}/none")).unwrap();
    options.connect_timeout = std::time::Duration::from_secs(2);
    let registry = PostgresRegistry::connect(options).unwrap();
    let outcome = registry.find_by_serial("01").await;
    assert!(
        matches!(outcome, Err(RegistryError::Unavailable(_))),
        "{outcome:?}"
    );
}

/// `registry copy`: a SQLite registry (filled by the suite) copied into
/// PostgreSQL reads back the same, record for record; copying again adds
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_registry_copies_into_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.sqlite");
    let sqlite = Arc::new(SqliteRegistry::open(&path).unwrap());
    suite(sqlite.clone(), "").await;
    lineage_suite(sqlite.clone(), "").await;
    let pg = Postgres::start();
    let url = pg.create_database("copied");
    let target = PostgresRegistry::open(PostgresOptions::from_url(&url).unwrap())
        .await
        .unwrap();
    let copied = target.copy_from_sqlite(&path).await.unwrap();
    assert!(copied.iter().all(|(_, rows)| *rows > 0), "{copied:?}");
    let again = target.copy_from_sqlite(&path).await.unwrap();
    assert!(again.iter().all(|(_, rows)| *rows == 0), "{again:?}");
    let certificates = |records: Vec<CertificateRecord>| {
        records
            .into_iter()
            .map(|r| {
                format!(
                    "{} {} {:?} {:?} {} {:?} {:?} {:?} {}",
                    r.certificate.serial,
                    r.state,
                    r.successor,
                    r.retired_at,
                    r.successor_proven,
                    r.certificate.device_id,
                    r.certificate.owner,
                    r.certificate.lineage,
                    r.issued_at
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        certificates(target.list_certificates(1_000).await.unwrap()),
        certificates(sqlite.list_certificates(1_000).await.unwrap())
    );
    let devices = |devices: Vec<Device>| {
        devices
            .into_iter()
            .map(|d| {
                format!(
                    "{} {} {:?} {} {}",
                    d.device.id, d.state, d.cert_serial, d.failed_attempts, d.device.edge_ca
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        devices(target.list_devices(None, 1_000).await.unwrap()),
        devices(sqlite.list_devices(None, 1_000).await.unwrap())
    );
    assert_eq!(
        target.list_rotations(100).await.unwrap(),
        sqlite.list_rotations(100).await.unwrap()
    );
    assert_eq!(
        target.list_pending().await.unwrap().len(),
        sqlite.list_pending().await.unwrap().len()
    );
    assert_eq!(
        target.local_revocations().await.unwrap(),
        sqlite.local_revocations().await.unwrap()
    );
}

/// TLS to the database: with `ca_file`, the server's certificate is
/// verified (a registry trusting another CA cannot connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server() {
    let (pg, ca) = Postgres::start_tls();
    let url = format!("{}?sslmode=require", pg.create_database("tls"));
    let mut options = PostgresOptions::from_url(&url).unwrap();
    options.ca_pem = Some(ca);
    let registry = PostgresRegistry::open(options.clone()).await.unwrap();
    registry
        .add_devices(vec![device("", "SN-TLS", "h")])
        .await
        .unwrap();
    assert!(registry.device("SN-TLS").await.unwrap().is_some());
    let (_other, other_ca) = Postgres::start_tls();
    options.ca_pem = Some(other_ca);
    options.connect_timeout = std::time::Duration::from_secs(3);
    let refused = PostgresRegistry::open(options).await;
    assert!(
        refused.is_err(),
        "connected with a CA that did not sign the server"
    );
}
