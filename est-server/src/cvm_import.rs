//! `devices import --from-cvm-dynamodb <table>`: brings over the device table
//! of the AWS reference certificate vending machine (`deviceInfo`: key
//! `serialNumber`, with `deviceToken` in clear, `applyState` `-1` once the
//! device has its certificate, and `certID`).
//!
//! Tokens are stored hashed ([`crate::devices::token_hash`]); devices that
//! already have their certificate come over as enrolled, with the
//! certificate as AWS IoT describes it recorded for them (so the audit and
//! rotation see its serial and expiry). Malformed rows are skipped and
//! reported; a re-run changes nothing that is already imported.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use ca_backends::aws::AwsIotBackend;
use ca_backends::IssuedCertificate;
use zeroize::Zeroizing;

use crate::authority::lineage;
use crate::devices::{is_valid_device_id, token_hash};
use crate::registry::{
    unix_now, unix_seconds, DeviceClaim, DeviceState, NewCertificate, NewDevice, Registry,
};

/// One row of the reference's table.
#[derive(Debug)]
pub struct CvmRow {
    /// `serialNumber`: the device id (and the certificate CN).
    pub serial: String,
    /// `deviceToken`, in clear as the reference keeps it (hashed before it is stored).
    pub token: Zeroizing<String>,
    /// `certID` when `applyState` is `-1`: the device has this certificate.
    pub enrolled_cert: Option<String>,
}

/// Reads one item in the reference's schema. `applyState` may be a number or
/// a string; `-1` means enrolled (and then `certID` is required), anything
/// else or nothing means the token is still unused.
pub fn parse_item(item: &HashMap<String, AttributeValue>) -> Result<CvmRow, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(value)) => Ok(Some(value.as_str())),
            Some(AttributeValue::N(value)) => Ok(Some(value.as_str())),
            Some(_) => Err(format!("{name} is neither a string nor a number")),
        }
    };
    let serial = text("serialNumber")?.ok_or("no serialNumber")?;
    if !is_valid_device_id(serial) {
        return Err(format!(
            "serialNumber `{}` is not a valid device id (1-128 printable ASCII, no `:` or `,`)",
            serial.escape_default()
        ));
    }
    let token = match text("deviceToken")? {
        Some(token) if !token.is_empty() && !token.contains(':') => token,
        Some(_) => return Err("deviceToken is empty or holds `:`".into()),
        None => return Err("no deviceToken".into()),
    };
    let enrolled = match text("applyState")?.map(str::trim) {
        None => false,
        Some(state) => match state.parse::<i64>() {
            Ok(-1) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(format!(
                    "applyState `{}` is not a number",
                    state.escape_default()
                ))
            }
        },
    };
    let enrolled_cert = match (enrolled, text("certID")?) {
        (false, _) => None,
        (true, Some(id)) if !id.is_empty() => Some(id.to_owned()),
        (true, _) => return Err("applyState is -1 but there is no certID".into()),
    };
    Ok(CvmRow {
        serial: serial.to_owned(),
        token: Zeroizing::new(token.to_owned()),
        enrolled_cert,
    })
}

/// Every item of `table`, page by page.
pub async fn scan(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "Scan {table}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                )
            })?;
        items.extend(out.items.unwrap_or_default());
        start = out.last_evaluated_key;
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// What importing one row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new device with an unused token.
    Add,
    /// A new device, enrolled with its certificate.
    AddEnrolled,
    /// Already in the registry as it would be imported.
    Unchanged,
    /// In the registry with another state or token: left alone.
    Conflict,
}

/// What an import did (or, dry, would do).
#[derive(Debug, Default)]
pub struct Report {
    /// Devices added with unused tokens.
    pub added: usize,
    /// Devices added as enrolled with their certificate.
    pub enrolled: usize,
    /// Rows already imported.
    pub unchanged: usize,
    /// Rows skipped, with why (row number, serial if readable, reason).
    pub skipped: Vec<String>,
}

/// Imports `items` into `registry` on `label`. Enrolled rows need their
/// certificate from AWS IoT (`iot`); a certificate AWS IoT does not know is
/// a skipped row. With `dry_run`, prints what would change and writes nothing.
pub async fn import(
    registry: &dyn Registry,
    iot: &AwsIotBackend,
    items: Vec<HashMap<String, AttributeValue>>,
    label: &str,
    dry_run: bool,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let bar = progress_bar(items.len());
    // Rows with unused tokens are added in batches (one transaction each);
    // only those the registry already knew are looked at one by one.
    let mut batch: Vec<(usize, CvmRow)> = Vec::new();
    for (number, item) in items.iter().enumerate() {
        bar.inc(1);
        let row = match parse_item(item) {
            Ok(row) => row,
            Err(reason) => {
                let serial = match item.get("serialNumber") {
                    Some(AttributeValue::S(s)) => format!(" ({})", s.escape_default()),
                    _ => String::new(),
                };
                report
                    .skipped
                    .push(format!("item {}{serial}: {reason}", number + 1));
                continue;
            }
        };
        if row.enrolled_cert.is_none() && !dry_run {
            batch.push((number, row));
            if batch.len() >= BATCH {
                add_batch(registry, std::mem::take(&mut batch), label, &mut report).await?;
            }
            continue;
        }
        let change = plan(registry, &row).await?;
        let certificate = match (&row.enrolled_cert, change) {
            (Some(id), Change::AddEnrolled) => match iot.describe(id).await? {
                Some(described) => Some(described),
                None => {
                    report.skipped.push(format!(
                        "item {} ({}): certificate {id} is not in AWS IoT",
                        number + 1,
                        row.serial
                    ));
                    continue;
                }
            },
            _ => None,
        };
        if dry_run {
            let what = match change {
                Change::Add => "add (token unused)".to_owned(),
                Change::AddEnrolled => format!(
                    "add enrolled with certificate {}",
                    row.enrolled_cert.as_deref().unwrap_or("-")
                ),
                Change::Unchanged => "unchanged".to_owned(),
                Change::Conflict => "already in the registry in another state; left alone".into(),
            };
            if change != Change::Unchanged {
                bar.suspend(|| println!("{}: {what}", row.serial));
            }
        } else if let Some(certificate) = certificate {
            add_enrolled(registry, &row, label, certificate).await?;
        }
        report.count(number, &row, change);
    }
    if !batch.is_empty() {
        add_batch(registry, batch, label, &mut report).await?;
    }
    bar.finish_and_clear();
    Ok(report)
}

impl Report {
    fn count(&mut self, number: usize, row: &CvmRow, change: Change) {
        match change {
            Change::Add => self.added += 1,
            Change::AddEnrolled => self.enrolled += 1,
            Change::Unchanged => self.unchanged += 1,
            Change::Conflict => self.skipped.push(format!(
                "item {} ({}): already in the registry with another token or state",
                number + 1,
                row.serial
            )),
        }
    }
}

/// Adds rows with unused tokens in one registry transaction; rows whose
/// device already existed are unchanged or a conflict.
async fn add_batch(
    registry: &dyn Registry,
    batch: Vec<(usize, CvmRow)>,
    label: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let devices = batch
        .iter()
        .map(|(_, row)| new_device(row, label))
        .collect();
    let added = registry.add_devices(devices).await?;
    for ((number, row), added) in batch.iter().zip(added) {
        let change = if added {
            Change::Add
        } else {
            plan(registry, row).await?
        };
        report.count(*number, row, change);
    }
    Ok(())
}

/// Devices with unused tokens added per registry transaction.
const BATCH: usize = 1000;

/// The progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("[{bar:40}] {pos}/{len} devices ({eta})")
    {
        bar.set_style(style.progress_chars("#> "));
    }
    bar
}

/// What importing `row` changes, given what the registry holds.
async fn plan(registry: &dyn Registry, row: &CvmRow) -> anyhow::Result<Change> {
    let Some(existing) = registry.device(&row.serial).await? else {
        return Ok(if row.enrolled_cert.is_some() {
            Change::AddEnrolled
        } else {
            Change::Add
        });
    };
    let same_token = existing.device.token_hash == token_hash(&row.token);
    Ok(match (existing.state, row.enrolled_cert.is_some()) {
        (DeviceState::Unused, false) if same_token => Change::Unchanged,
        // A previous run added the device but stopped before recording its certificate.
        (DeviceState::Unused, true) if same_token && existing.cert_serial.is_none() => {
            Change::AddEnrolled
        }
        (DeviceState::Enrolled, true) if same_token => Change::Unchanged,
        _ => Change::Conflict,
    })
}

/// The registry entry of a row: its token hashed, on `label`.
fn new_device(row: &CvmRow, label: &str) -> NewDevice {
    NewDevice {
        id: row.serial.clone(),
        token_hash: token_hash(&row.token),
        label: label.to_owned(),
        thing_name: None,
        policy: None,
        edge_ca: false,
    }
}

/// Adds an enrolled row's device (unless a previous run did) and records
/// its certificate, burning the token.
async fn add_enrolled(
    registry: &dyn Registry,
    row: &CvmRow,
    label: &str,
    (issued, status): (IssuedCertificate, String),
) -> anyhow::Result<()> {
    let device = new_device(row, label);
    let hash = device.token_hash.clone();
    registry.add_devices(vec![device]).await?;
    // The token is burned the way an enrollment burns it: reserved, then
    // claimed by the transaction that records the certificate.
    let owner = format!("cvm-import:{}", std::process::id());
    registry
        .reserve_device(&row.serial, &hash, &owner, unix_now() + 60)
        .await?;
    let record = NewCertificate {
        serial: issued.serial_hex.clone(),
        fingerprint: est_wire::sha256_hex(&issued.der),
        label: label.to_owned(),
        subject: issued.certificate.tbs_certificate.subject.to_string(),
        san: est_wire::names::general_names_text(&est_wire::names::certificate_sans(
            &issued.certificate,
        )),
        not_before: unix_seconds(issued.not_before),
        not_after: unix_seconds(issued.not_after),
        auth: "import:cvm-dynamodb".into(),
        predecessor: None,
        device_id: Some(row.serial.clone()),
        backend_ref: issued.backend_ref.clone(),
        owner: Some(lineage::device_owner(&row.serial)),
        // Unknown: what the reference's request asked for. Such certificates
        // are matched by label, subject, names and key kind.
        lineage: None,
        der: issued.der.clone(),
    };
    let claim = DeviceClaim {
        device_id: row.serial.clone(),
        owner: owner.clone(),
        cert_id: issued.backend_ref.clone(),
    };
    if let Err(e) = registry
        .record_issued(record, None, None, Some(claim))
        .await
    {
        registry.release_device(&row.serial, &owner).await?;
        return Err(e.into());
    }
    if status != "ACTIVE" {
        registry.revoke(&issued.serial_hex).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(fields: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }
    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }
    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    #[test]
    fn reference_rows() {
        let row = parse_item(&item(&[
            ("serialNumber", s("SN-1")),
            ("deviceToken", s("tok")),
            ("applyState", n("0")),
        ]))
        .unwrap();
        assert_eq!(row.serial, "SN-1");
        assert_eq!(row.enrolled_cert, None);
        let row = parse_item(&item(&[
            ("serialNumber", s("SN-2")),
            ("deviceToken", s("tok")),
            ("applyState", n("-1")),
            ("certID", s("abc")),
        ]))
        .unwrap();
        assert_eq!(row.enrolled_cert.as_deref(), Some("abc"));
        let row = parse_item(&item(&[
            ("serialNumber", s("SN-3")),
            ("deviceToken", s("tok")),
            ("applyState", s("-1")),
            ("certID", s("abc")),
        ]))
        .unwrap();
        assert!(row.enrolled_cert.is_some());
    }

    #[test]
    fn malformed_rows() {
        for fields in [
            vec![("deviceToken", s("tok"))],
            vec![("serialNumber", s("a b")), ("deviceToken", s("tok"))],
            vec![("serialNumber", s("SN"))],
            vec![("serialNumber", s("SN")), ("deviceToken", s(""))],
            vec![
                ("serialNumber", s("SN")),
                ("deviceToken", s("t")),
                ("applyState", s("yes")),
            ],
            vec![
                ("serialNumber", s("SN")),
                ("deviceToken", s("t")),
                ("applyState", n("-1")),
            ],
            vec![
                ("serialNumber", AttributeValue::Bool(true)),
                ("deviceToken", s("t")),
            ],
        ] {
            assert!(parse_item(&item(&fields)).is_err(), "{fields:?}");
        }
    }
}
