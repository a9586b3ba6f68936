//! The shared registry: one DynamoDB table, for several servers.
//!
//! One table, partition key `pk` (string); items are `cert#<serial>`,
//! `device#<id>`, `pending#<id>`, `rotation#<client id>`, `lease#<name>` and
//! `fp#<fingerprint>` (a pointer to a serial: this version finds presented
//! certificates by serial, but still writes the pointer so that servers of
//! earlier versions sharing the table, during a rolling upgrade or after a
//! rollback, find the certificates it issues). Three sparse global secondary
//! indexes keep the hot look-ups
//! off table scans: `expiry` (`gsi_state` = "active", `not_after`) for audits,
//! `by_device` (`device_id`, `issued_at`) for device histories, and `retire`
//! (`retire_label` = `label#<label>`, `superseded_at`) for the retirement sweeper. Every
//! transition is a conditional write — a renewal, a token redemption and the
//! certificate they produce are one `TransactWriteItems` — so the guarantees
//! of the SQLite registry hold across processes. Operator listings scan.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ScalarAttributeType,
    TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;

use super::{
    unix_now, CertState, CertificateRecord, Device, DeviceClaim, DeviceState, NewCertificate,
    NewDevice, PendingRequest, PendingState, Registry, RegistryError, Rotation, RotationState,
};

type Item = HashMap<String, AttributeValue>;

/// The `retire` index key of a superseded certificate of `label`. DynamoDB
/// refuses empty strings in index keys, so the unlabelled path (`""`) could
/// not be keyed by its bare label: every key carries a prefix. Certificates
/// superseded by earlier versions (keyed by the bare, non-empty label) are
/// still found: `retirement_candidates` reads both keys.
fn retire_key(label: &str) -> String {
    format!("label#{label}")
}

/// A registry in one DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoDbRegistry {
    client: Client,
    table: String,
}

impl DynamoDbRegistry {
    /// Uses `table` through an SDK configuration (region, endpoint, credentials).
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self {
            client: Client::new(config),
            table: table.into(),
        }
    }

    /// Creates the table and its indexes (on-demand billing); a no-op when it exists.
    pub async fn create_table(&self) -> Result<(), RegistryError> {
        let attr = |name: &str, kind: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .map_err(build)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build)
        };
        let index =
            |name: &str, hash: &str, range: &str| -> Result<GlobalSecondaryIndex, RegistryError> {
                GlobalSecondaryIndex::builder()
                    .index_name(name)
                    .key_schema(key(hash, KeyType::Hash)?)
                    .key_schema(key(range, KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(build)
            };
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("gsi_state", ScalarAttributeType::S)?)
            .attribute_definitions(attr("not_after", ScalarAttributeType::N)?)
            .attribute_definitions(attr("device_id", ScalarAttributeType::S)?)
            .attribute_definitions(attr("issued_at", ScalarAttributeType::N)?)
            .attribute_definitions(attr("retire_label", ScalarAttributeType::S)?)
            .attribute_definitions(attr("superseded_at", ScalarAttributeType::N)?)
            .key_schema(key("pk", KeyType::Hash)?)
            .global_secondary_indexes(index("expiry", "gsi_state", "not_after")?)
            .global_secondary_indexes(index("by_device", "device_id", "issued_at")?)
            .global_secondary_indexes(index("retire", "retire_label", "superseded_at")?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(sdk("CreateTable", e)),
        }
    }

    async fn get(&self, pk: String) -> Result<Option<Item>, RegistryError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk("GetItem", e))?;
        Ok(out.item)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<Item>, RegistryError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :p)")
                .expression_attribute_values(":p", s(prefix))
                .set_exclusive_start_key(start)
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk("Scan", e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    async fn query_index(
        &self,
        index: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<Item>, RegistryError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(condition)
                .scan_index_forward(forward)
                .set_exclusive_start_key(start);
            for (name, value) in &values {
                query = query.expression_attribute_values(*name, value.clone());
            }
            let out = query.send().await.map_err(|e| sdk("Query", e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() || items.len() >= limit {
                items.truncate(limit);
                return Ok(items);
            }
        }
    }

    async fn update(
        &self,
        pk: String,
        expression: &str,
        condition: Option<&str>,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, RegistryError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression(expression)
            .set_condition_expression(condition.map(str::to_owned));
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        if expression.contains("#st") || condition.is_some_and(|c| c.contains("#st")) {
            request = request.expression_attribute_names("#st", "state");
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(sdk("UpdateItem", e)),
        }
    }

    /// Locks device `id` against token attempts for `secs` from now.
    async fn lock_device(&self, id: &str, secs: i64) -> Result<(), RegistryError> {
        self.update(
            format!("device#{id}"),
            "SET locked_until = :until",
            None,
            vec![(":until", n(unix_now() + secs))],
        )
        .await?;
        Ok(())
    }

    /// Runs `steps` as one transaction; a failed condition becomes the
    /// error its step names (`claimed`: the device step was a claim).
    /// The transaction steps that make `serial` the live certificate of a
    /// lineage: its head item must be absent, name `supersedes`, or name a
    /// certificate that is no longer active.
    async fn lineage_head_steps(
        &self,
        owner: &str,
        lineage: &str,
        serial: &str,
        supersedes: Option<&str>,
    ) -> Result<Vec<(TransactWriteItem, Failure)>, RegistryError> {
        let pk = lineage_pk(owner, lineage);
        let head = self
            .get(pk.clone())
            .await?
            .and_then(|item| opt_s(&item, "serial"));
        let mut steps = Vec::new();
        let mut put = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("serial", s(serial));
        match head {
            None => put = put.condition_expression("attribute_not_exists(pk)"),
            Some(current) => {
                if Some(current.as_str()) != supersedes {
                    // The head names another certificate: allowed only when
                    // that one is no longer active, checked in the transaction.
                    let check = ConditionCheck::builder()
                        .table_name(&self.table)
                        .key("pk", s(format!("cert#{current}")))
                        .condition_expression("#st <> :active")
                        .expression_attribute_names("#st", "state")
                        .expression_attribute_values(":active", s("active"))
                        .build()
                        .map_err(build)?;
                    steps.push((
                        TransactWriteItem::builder().condition_check(check).build(),
                        Failure::Lineage,
                    ));
                }
                put = put
                    .condition_expression("serial = :head")
                    .expression_attribute_values(":head", s(&current));
            }
        }
        steps.push((
            TransactWriteItem::builder()
                .put(put.build().map_err(build)?)
                .build(),
            Failure::Lineage,
        ));
        Ok(steps)
    }

    async fn transact(
        &self,
        steps: Vec<(TransactWriteItem, Failure)>,
        claimed: bool,
    ) -> Result<(), RegistryError> {
        let (items, failures): (Vec<_>, Vec<_>) = steps.into_iter().unzip();
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(service))
                if service.err().is_transaction_canceled_exception() =>
            {
                let reasons: Vec<Option<String>> = match service.err() {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(e) => {
                        e.cancellation_reasons().iter().map(|r| r.code().map(str::to_owned)).collect()
                    }
                    _ => Vec::new(),
                };
                for (reason, failure) in reasons.iter().zip(&failures) {
                    if reason.as_deref() == Some("ConditionalCheckFailed") {
                        return Err(match failure {
                            Failure::Predecessor(old) => {
                                RegistryError::PredecessorNotActive(old.clone())
                            }
                            Failure::Device(device) if claimed => {
                                RegistryError::ReservationLost(device.clone())
                            }
                            Failure::Lineage => RegistryError::LineageBusy,
                            _ => RegistryError::Database(format!(
                                "conditional write failed: {reasons:?}"
                            )),
                        });
                    }
                }
                Err(RegistryError::Database(format!(
                    "transaction cancelled: {reasons:?}"
                )))
            }
            Err(e) => Err(sdk("TransactWriteItems", e)),
        }
    }
}

#[async_trait::async_trait]
impl Registry for DynamoDbRegistry {
    async fn record_issued(
        &self,
        certificate: NewCertificate,
        supersedes: Option<String>,
        pending_id: Option<String>,
        claim: Option<DeviceClaim>,
    ) -> Result<(), RegistryError> {
        let now = unix_now();
        let mut device_id = certificate.device_id.clone();
        let mut steps: Vec<(TransactWriteItem, Failure)> = Vec::new();
        if let Some(old) = &supersedes {
            let predecessor = self.get(format!("cert#{old}")).await?;
            if device_id.is_none() {
                device_id = predecessor
                    .as_ref()
                    .and_then(|item| opt_s(item, "device_id"));
            }
            // The retire index key is derived from the predecessor's label
            // (never empty, see `retire_key`); the condition makes sure the
            // label read is the one the item still has.
            let old_label = predecessor
                .as_ref()
                .and_then(|item| opt_s(item, "label"))
                .unwrap_or_default();
            let update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(format!("cert#{old}")))
                .update_expression("SET #st = :superseded, successor = :new, superseded_at = :now, retire_label = :retire REMOVE gsi_state")
                .condition_expression("#st = :active AND #label = :label")
                .expression_attribute_names("#st", "state")
                .expression_attribute_names("#label", "label")
                .expression_attribute_values(":superseded", s("superseded"))
                .expression_attribute_values(":active", s("active"))
                .expression_attribute_values(":new", s(&certificate.serial))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":label", s(&old_label))
                .expression_attribute_values(":retire", s(retire_key(&old_label)))
                .build()
                .map_err(build)?;
            steps.push((
                TransactWriteItem::builder().update(update).build(),
                Failure::Predecessor(old.clone()),
            ));
        }
        if let (Some(owner), Some(lineage)) = (&certificate.owner, &certificate.lineage) {
            steps.extend(
                self.lineage_head_steps(owner, lineage, &certificate.serial, supersedes.as_deref())
                    .await?,
            );
        }
        if let Some(claim) = &claim {
            device_id = Some(claim.device_id.clone());
        }
        if let Some(device) = &device_id {
            let mut update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(format!("device#{device}")))
                .expression_attribute_values(":serial", s(&certificate.serial))
                .expression_attribute_values(":fp", s(&certificate.fingerprint))
                .expression_attribute_values(":na", n(certificate.not_after));
            let mut expression = String::from(
                "SET cert_serial = :serial, cert_fingerprint = :fp, cert_not_after = :na",
            );
            if let Some(claim) = &claim {
                expression
                    .push_str(", #st = :enrolled, enrolled_at = :now, failed_attempts = :zero");
                if let Some(id) = &claim.cert_id {
                    expression.push_str(", cert_id = :cid");
                    update = update.expression_attribute_values(":cid", s(id));
                }
                expression.push_str(" REMOVE lease_owner, lease_until");
                update = update
                    .condition_expression("#st = :unused AND lease_owner = :owner")
                    .expression_attribute_names("#st", "state")
                    .expression_attribute_values(":enrolled", s("enrolled"))
                    .expression_attribute_values(":unused", s("unused"))
                    .expression_attribute_values(":owner", s(&claim.owner))
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":zero", n(0));
            } else {
                update = update.condition_expression("attribute_exists(pk)");
            }
            let update = update
                .update_expression(expression)
                .build()
                .map_err(build)?;
            steps.push((
                TransactWriteItem::builder().update(update).build(),
                Failure::Device(device.clone()),
            ));
        }
        let mut item: Item = HashMap::new();
        item.insert("pk".into(), s(format!("cert#{}", certificate.serial)));
        item.insert("serial".into(), s(&certificate.serial));
        item.insert("fingerprint".into(), s(&certificate.fingerprint));
        item.insert("label".into(), s(&certificate.label));
        item.insert("subject".into(), s(&certificate.subject));
        item.insert("san".into(), s(&certificate.san));
        item.insert("not_before".into(), n(certificate.not_before));
        item.insert("not_after".into(), n(certificate.not_after));
        item.insert("auth".into(), s(&certificate.auth));
        item.insert("state".into(), s("active"));
        item.insert("gsi_state".into(), s("active"));
        item.insert("issued_at".into(), n(now));
        item.insert(
            "der".into(),
            AttributeValue::B(certificate.der.clone().into()),
        );
        for (name, value) in [
            ("predecessor", &certificate.predecessor),
            ("device_id", &device_id),
            ("backend_ref", &certificate.backend_ref),
            ("owner", &certificate.owner),
            ("lineage", &certificate.lineage),
        ] {
            if let Some(value) = value {
                item.insert(name.into(), s(value));
            }
        }
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build)?;
        steps.push((
            TransactWriteItem::builder().put(put).build(),
            Failure::Other,
        ));
        let pointer = Put::builder()
            .table_name(&self.table)
            .item("pk", s(format!("fp#{}", certificate.fingerprint)))
            .item("serial", s(&certificate.serial))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build)?;
        steps.push((
            TransactWriteItem::builder().put(pointer).build(),
            Failure::Other,
        ));
        if let Some(id) = &pending_id {
            let update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(format!("pending#{id}")))
                .update_expression("SET #st = :issued, issued_serial = :serial")
                .expression_attribute_names("#st", "state")
                .expression_attribute_values(":issued", s("issued"))
                .expression_attribute_values(":serial", s(&certificate.serial))
                .build()
                .map_err(build)?;
            steps.push((
                TransactWriteItem::builder().update(update).build(),
                Failure::Other,
            ));
        }
        self.transact(steps, claim.is_some()).await
    }

    async fn live_in_lineage(
        &self,
        owner: &str,
        lineage: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        let Some(serial) = self
            .get(lineage_pk(owner, lineage))
            .await?
            .and_then(|item| opt_s(&item, "serial"))
        else {
            return Ok(None);
        };
        Ok(self
            .find_by_serial(&serial)
            .await?
            .filter(|record| record.state == CertState::Active))
    }

    async fn set_device_edge_ca(&self, id: &str, allowed: bool) -> Result<(), RegistryError> {
        match self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("device#{id}")))
            .update_expression("SET edge_ca = :allowed")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":allowed", AttributeValue::Bool(allowed))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(RegistryError::NotFound(format!("device {id}")))
            }
            Err(e) => Err(sdk("UpdateItem", e)),
        }
    }

    async fn find_by_serial(
        &self,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, RegistryError> {
        Ok(self
            .get(format!("cert#{serial}"))
            .await?
            .map(|item| record(&item)))
    }

    async fn list_certificates(
        &self,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        let mut records: Vec<CertificateRecord> = self
            .scan_prefix("cert#")
            .await?
            .iter()
            .map(record)
            .collect();
        records.sort_by(|a, b| {
            b.issued_at
                .cmp(&a.issued_at)
                .then(a.certificate.serial.cmp(&b.certificate.serial))
        });
        records.truncate(limit);
        Ok(records)
    }

    async fn expiring_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        let items = self
            .query_index(
                "expiry",
                "gsi_state = :active AND not_after < :before",
                vec![(":active", s("active")), (":before", n(before))],
                true,
                limit,
            )
            .await?;
        Ok(items.iter().map(record).collect())
    }

    async fn count_expiring_before(&self, before: i64) -> Result<u64, RegistryError> {
        let mut count = 0u64;
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("expiry")
                .key_condition_expression("gsi_state = :active AND not_after <= :before")
                .expression_attribute_values(":active", s("active"))
                .expression_attribute_values(":before", n(before))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk("Query", e))?;
            count += out.count.max(0) as u64;
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    async fn revoke(&self, serial: &str) -> Result<(), RegistryError> {
        let changed = self
            .update(
                format!("cert#{serial}"),
                "SET #st = :revoked, revoked_at = if_not_exists(revoked_at, :now) REMOVE gsi_state",
                Some("attribute_exists(pk)"),
                vec![(":revoked", s("revoked")), (":now", n(unix_now()))],
            )
            .await?;
        if changed {
            Ok(())
        } else {
            Err(RegistryError::NotFound(format!("certificate {serial}")))
        }
    }

    async fn mark_predecessor_proven(
        &self,
        serial: &str,
        fingerprint: &str,
    ) -> Result<(), RegistryError> {
        let Some(current) = self.find_presented(serial, fingerprint).await? else {
            return Ok(());
        };
        if current.state != CertState::Active {
            return Ok(());
        }
        if let Some(predecessor) = current.certificate.predecessor {
            self.update(
                format!("cert#{predecessor}"),
                "SET proven = :yes",
                Some("attribute_not_exists(retired_at) AND attribute_not_exists(proven)"),
                vec![(":yes", n(1))],
            )
            .await?;
        }
        Ok(())
    }

    async fn retirement_candidates(
        &self,
        label: &str,
        superseded_before: i64,
        limit: usize,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        let mut items = self
            .query_index(
                "retire",
                "retire_label = :label",
                vec![(":label", s(retire_key(label)))],
                true,
                usize::MAX,
            )
            .await?;
        if !label.is_empty() {
            // Superseded by a version that keyed the index by the bare label.
            items.extend(
                self.query_index(
                    "retire",
                    "retire_label = :label",
                    vec![(":label", s(label))],
                    true,
                    usize::MAX,
                )
                .await?,
            );
            items.sort_by_key(|item| opt_n(item, "superseded_at").unwrap_or(0));
        }
        Ok(items
            .iter()
            .filter(|item| {
                item.contains_key("proven")
                    || opt_n(item, "superseded_at").unwrap_or(0) < superseded_before
            })
            .take(limit)
            .map(record)
            .collect())
    }

    async fn mark_retired(&self, serial: &str) -> Result<(), RegistryError> {
        self.update(
            format!("cert#{serial}"),
            "SET retired_at = :now REMOVE retire_label",
            Some("attribute_not_exists(retired_at)"),
            vec![(":now", n(unix_now()))],
        )
        .await?;
        Ok(())
    }

    async fn local_revocations(&self) -> Result<Vec<(String, i64)>, RegistryError> {
        let mut found: Vec<(String, i64)> = self
            .scan_prefix("cert#")
            .await?
            .iter()
            .filter(|item| !item.contains_key("backend_ref"))
            .filter_map(|item| {
                let at = opt_n(item, "revoked_at").or_else(|| opt_n(item, "retired_at"))?;
                Some((opt_s(item, "serial")?, at))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    async fn pending(&self, id: &str) -> Result<Option<PendingRequest>, RegistryError> {
        Ok(self
            .get(format!("pending#{id}"))
            .await?
            .map(|item| pending(&item)))
    }

    async fn add_pending(&self, request: PendingRequest) -> Result<(), RegistryError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("pending#{}", request.id)))
            .item("id", s(&request.id))
            .item("label", s(&request.label))
            .item("subject", s(&request.subject))
            .item("requested_by", s(&request.requested_by))
            .item("state", s("pending"))
            .item("created_at", n(request.created_at))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(sdk("PutItem", e)),
        }
    }

    async fn decide_pending(&self, id: &str, approve: bool) -> Result<(), RegistryError> {
        let state = if approve {
            PendingState::Approved
        } else {
            PendingState::Rejected
        };
        let changed = self
            .update(
                format!("pending#{id}"),
                "SET #st = :decision, decided_at = :now",
                Some("#st = :pending"),
                vec![
                    (":decision", s(state.as_str())),
                    (":now", n(unix_now())),
                    (":pending", s("pending")),
                ],
            )
            .await?;
        if changed {
            Ok(())
        } else {
            Err(RegistryError::NotFound(format!("pending request {id}")))
        }
    }

    async fn list_pending(&self) -> Result<Vec<PendingRequest>, RegistryError> {
        let mut requests: Vec<PendingRequest> = self
            .scan_prefix("pending#")
            .await?
            .iter()
            .map(pending)
            .collect();
        requests.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(requests)
    }

    async fn add_devices(&self, devices: Vec<NewDevice>) -> Result<Vec<bool>, RegistryError> {
        let mut added = Vec::with_capacity(devices.len());
        let now = unix_now();
        for device in devices {
            let mut request = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(format!("device#{}", device.id)))
                .item("id", s(&device.id))
                .item("token_hash", s(&device.token_hash))
                .item("label", s(&device.label))
                .item("state", s("unused"))
                .item("created_at", n(now))
                .item("failed_attempts", n(0))
                .condition_expression("attribute_not_exists(pk)");
            if let Some(thing) = &device.thing_name {
                request = request.item("thing_name", s(thing));
            }
            if let Some(policy) = &device.policy {
                request = request.item("policy", s(policy));
            }
            if device.edge_ca {
                request = request.item("edge_ca", AttributeValue::Bool(true));
            }
            match request.send().await {
                Ok(_) => added.push(true),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => added.push(false),
                Err(e) => return Err(sdk("PutItem", e)),
            }
        }
        Ok(added)
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, RegistryError> {
        Ok(self
            .get(format!("device#{id}"))
            .await?
            .map(|item| device(&item)))
    }

    async fn list_devices(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Device>, RegistryError> {
        let after = after.unwrap_or_default();
        let mut devices: Vec<Device> = self
            .scan_prefix("device#")
            .await?
            .iter()
            .map(device)
            .filter(|d| d.device.id > after)
            .collect();
        devices.sort_by(|a, b| a.device.id.cmp(&b.device.id));
        devices.truncate(limit);
        Ok(devices)
    }

    async fn device_certificates(&self, id: &str) -> Result<Vec<CertificateRecord>, RegistryError> {
        let items = self
            .query_index(
                "by_device",
                "device_id = :d",
                vec![(":d", s(id))],
                false,
                usize::MAX,
            )
            .await?;
        Ok(items.iter().map(record).collect())
    }

    async fn disable_device(&self, id: &str) -> Result<(), RegistryError> {
        let changed = self
            .update(
                format!("device#{id}"),
                "SET #st = :disabled",
                Some("attribute_exists(pk)"),
                vec![(":disabled", s("disabled"))],
            )
            .await?;
        if changed {
            Ok(())
        } else {
            Err(RegistryError::NotFound(format!("device {id}")))
        }
    }

    async fn record_failed_attempt(
        &self,
        id: &str,
        lock_after: u32,
        lock_secs: i64,
    ) -> Result<(), RegistryError> {
        // A lock that has run out ends the count too: this failure is the
        // first of a new series.
        let restarted = self
            .update(
                format!("device#{id}"),
                "SET failed_attempts = :one REMOVE locked_until",
                Some("locked_until <= :now"),
                vec![(":one", n(1)), (":now", n(unix_now()))],
            )
            .await?;
        if restarted {
            if lock_after <= 1 {
                self.lock_device(id, lock_secs).await?;
            }
            return Ok(());
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("device#{id}")))
            .update_expression("ADD failed_attempts :one")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":one", n(1))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await;
        let attempts = match out {
            Ok(out) => out
                .attributes
                .as_ref()
                .and_then(|a| opt_n(a, "failed_attempts"))
                .unwrap_or(0),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => return Ok(()),
            Err(e) => return Err(sdk("UpdateItem", e)),
        };
        if attempts >= i64::from(lock_after) {
            self.lock_device(id, lock_secs).await?;
        }
        Ok(())
    }

    async fn reserve_device(
        &self,
        id: &str,
        token_hash: &str,
        owner: &str,
        lease_until: i64,
    ) -> Result<(), RegistryError> {
        let reserved = self
            .update(
                format!("device#{id}"),
                "SET lease_owner = :owner, lease_until = :until",
                Some("token_hash = :hash AND #st = :unused AND (attribute_not_exists(lease_until) OR lease_until < :now)"),
                vec![
                    (":owner", s(owner)),
                    (":until", n(lease_until)),
                    (":hash", s(token_hash)),
                    (":unused", s("unused")),
                    (":now", n(unix_now())),
                ],
            )
            .await?;
        if reserved {
            return Ok(());
        }
        Err(match self.device(id).await?.map(|d| d.state) {
            None => RegistryError::NotFound(format!("device {id}")),
            Some(DeviceState::Enrolled) => RegistryError::TokenUsed(id.to_owned()),
            Some(DeviceState::Disabled) => RegistryError::DeviceDisabled(id.to_owned()),
            Some(DeviceState::Unused) => RegistryError::DeviceBusy(id.to_owned()),
        })
    }

    async fn release_device(&self, id: &str, owner: &str) -> Result<(), RegistryError> {
        self.update(
            format!("device#{id}"),
            "REMOVE lease_owner, lease_until",
            Some("lease_owner = :owner"),
            vec![(":owner", s(owner))],
        )
        .await?;
        Ok(())
    }

    async fn reinstate_predecessor(
        &self,
        predecessor: &str,
        successor: &str,
    ) -> Result<(), RegistryError> {
        let refused = || RegistryError::PredecessorNotActive(predecessor.to_owned());
        let old = self
            .get(format!("cert#{predecessor}"))
            .await?
            .map(|item| record(&item))
            .ok_or_else(refused)?;
        let now = unix_now();
        let revoke = Update::builder()
            .table_name(&self.table)
            .key("pk", s(format!("cert#{successor}")))
            .update_expression("SET #st = :revoked, revoked_at = :now REMOVE gsi_state")
            .condition_expression("#st = :active")
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":revoked", s("revoked"))
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":now", n(now))
            .build()
            .map_err(build)?;
        let reinstate = Update::builder()
            .table_name(&self.table)
            .key("pk", s(format!("cert#{predecessor}")))
            .update_expression(
                "SET #st = :active, gsi_state = :active \
                 REMOVE successor, superseded_at, retire_label, proven",
            )
            .condition_expression(
                "#st = :superseded AND successor = :new AND attribute_not_exists(retired_at) \
                 AND attribute_not_exists(proven)",
            )
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":active", s("active"))
            .expression_attribute_values(":superseded", s("superseded"))
            .expression_attribute_values(":new", s(successor))
            .build()
            .map_err(build)?;
        let failure = || Failure::Predecessor(predecessor.to_owned());
        let mut steps = vec![
            (
                TransactWriteItem::builder().update(revoke).build(),
                failure(),
            ),
            (
                TransactWriteItem::builder().update(reinstate).build(),
                failure(),
            ),
        ];
        if let (Some(owner), Some(lineage)) = (&old.certificate.owner, &old.certificate.lineage) {
            let head = Put::builder()
                .table_name(&self.table)
                .item("pk", s(lineage_pk(owner, lineage)))
                .item("serial", s(predecessor))
                .build()
                .map_err(build)?;
            steps.push((TransactWriteItem::builder().put(head).build(), failure()));
        }
        if let Some(device) = &old.certificate.device_id {
            let mut update = Update::builder()
                .table_name(&self.table)
                .key("pk", s(format!("device#{device}")))
                .condition_expression("cert_serial = :new")
                .expression_attribute_values(":new", s(successor))
                .expression_attribute_values(":serial", s(predecessor))
                .expression_attribute_values(":fp", s(&old.certificate.fingerprint))
                .expression_attribute_values(":na", n(old.certificate.not_after));
            let mut expression =
                "SET cert_serial = :serial, cert_fingerprint = :fp, cert_not_after = :na"
                    .to_owned();
            if let Some(id) = &old.certificate.backend_ref {
                expression.push_str(", cert_id = :cid");
                update = update.expression_attribute_values(":cid", s(id));
            }
            let update = update
                .update_expression(expression)
                .build()
                .map_err(build)?;
            steps.push((
                TransactWriteItem::builder().update(update).build(),
                failure(),
            ));
        }
        self.transact(steps, false).await
    }

    async fn rotation(&self, client_id: &str) -> Result<Option<Rotation>, RegistryError> {
        Ok(self
            .get(format!("rotation#{client_id}"))
            .await?
            .map(|item| rotation(&item)))
    }

    async fn save_rotation(&self, rotation: Rotation) -> Result<(), RegistryError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(rotation_item(&rotation)))
            .send()
            .await
            .map_err(|e| sdk("PutItem", e))?;
        Ok(())
    }

    async fn replace_rotation(
        &self,
        expected: &Rotation,
        rotation: Rotation,
    ) -> Result<bool, RegistryError> {
        let mut condition = "#serial = :serial AND #st = :state AND #attempts = :attempts \
            AND #requested = :requested AND #updated = :updated AND #next = :next"
            .to_owned();
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(rotation_item(&rotation)))
            .expression_attribute_names("#serial", "serial")
            .expression_attribute_names("#st", "state")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_names("#requested", "requested_at")
            .expression_attribute_names("#updated", "updated_at")
            .expression_attribute_names("#next", "next_attempt_at")
            .expression_attribute_names("#error", "last_error")
            .expression_attribute_names("#new", "new_serial")
            .expression_attribute_values(":serial", s(&expected.serial))
            .expression_attribute_values(":state", s(expected.state.as_str()))
            .expression_attribute_values(":attempts", n(expected.attempts.into()))
            .expression_attribute_values(":requested", n(expected.requested_at))
            .expression_attribute_values(":updated", n(expected.updated_at))
            .expression_attribute_values(":next", n(expected.next_attempt_at));
        match &expected.last_error {
            Some(error) => {
                condition.push_str(" AND #error = :error");
                request = request.expression_attribute_values(":error", s(error));
            }
            None => condition.push_str(" AND attribute_not_exists(#error)"),
        }
        match &expected.new_serial {
            Some(serial) => {
                condition.push_str(" AND #new = :new");
                request = request.expression_attribute_values(":new", s(serial));
            }
            None => condition.push_str(" AND attribute_not_exists(#new)"),
        }
        match request.condition_expression(condition).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(sdk("PutItem", e)),
        }
    }

    async fn list_rotations(&self, limit: usize) -> Result<Vec<Rotation>, RegistryError> {
        let mut rotations: Vec<Rotation> = self
            .scan_prefix("rotation#")
            .await?
            .iter()
            .map(rotation)
            .collect();
        rotations.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        rotations.truncate(limit);
        Ok(rotations)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        until: i64,
    ) -> Result<bool, RegistryError> {
        // UpdateItem creates the item when it is missing.
        self.update(
            format!("lease#{name}"),
            "SET holder = :holder, expires_at = :until",
            Some("attribute_not_exists(pk) OR holder = :holder OR expires_at < :now"),
            vec![
                (":holder", s(holder)),
                (":until", n(until)),
                (":now", n(unix_now())),
            ],
        )
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), RegistryError> {
        self.update(
            format!("lease#{name}"),
            "SET expires_at = :ended",
            Some("holder = :holder"),
            vec![(":holder", s(holder)), (":ended", n(0))],
        )
        .await
        .map(drop)
    }
}

fn rotation(item: &Item) -> Rotation {
    Rotation {
        client_id: opt_s(item, "client_id").unwrap_or_default(),
        serial: opt_s(item, "serial").unwrap_or_default(),
        state: RotationState::parse(&opt_s(item, "state").unwrap_or_default()),
        attempts: opt_n(item, "attempts").unwrap_or(0) as u32,
        last_error: opt_s(item, "last_error"),
        new_serial: opt_s(item, "new_serial"),
        requested_at: opt_n(item, "requested_at").unwrap_or(0),
        updated_at: opt_n(item, "updated_at").unwrap_or(0),
        next_attempt_at: opt_n(item, "next_attempt_at").unwrap_or(0),
    }
}

/// Which condition of a transaction a cancellation reason points at.
enum Failure {
    Predecessor(String),
    Device(String),
    Lineage,
    Other,
}

/// The key of a lineage's head item, which names its live certificate
/// (`serial`): DynamoDB's way of keeping one live certificate per lineage
/// across servers, as SQLite's unique partial index does.
fn lineage_pk(owner: &str, lineage: &str) -> String {
    format!("lineage#{owner}#{lineage}")
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn opt_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn opt_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn record(item: &Item) -> CertificateRecord {
    CertificateRecord {
        certificate: NewCertificate {
            serial: opt_s(item, "serial").unwrap_or_default(),
            fingerprint: opt_s(item, "fingerprint").unwrap_or_default(),
            label: opt_s(item, "label").unwrap_or_default(),
            subject: opt_s(item, "subject").unwrap_or_default(),
            san: opt_s(item, "san").unwrap_or_default(),
            not_before: opt_n(item, "not_before").unwrap_or(0),
            not_after: opt_n(item, "not_after").unwrap_or(0),
            auth: opt_s(item, "auth").unwrap_or_default(),
            predecessor: opt_s(item, "predecessor"),
            device_id: opt_s(item, "device_id"),
            backend_ref: opt_s(item, "backend_ref"),
            owner: opt_s(item, "owner"),
            lineage: opt_s(item, "lineage"),
            der: item
                .get("der")
                .and_then(|v| v.as_b().ok())
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default(),
        },
        state: CertState::parse(&opt_s(item, "state").unwrap_or_default()),
        successor: opt_s(item, "successor"),
        issued_at: opt_n(item, "issued_at").unwrap_or(0),
        retired_at: opt_n(item, "retired_at"),
        successor_proven: item.contains_key("proven"),
    }
}

fn pending(item: &Item) -> PendingRequest {
    PendingRequest {
        id: opt_s(item, "id").unwrap_or_default(),
        label: opt_s(item, "label").unwrap_or_default(),
        subject: opt_s(item, "subject").unwrap_or_default(),
        requested_by: opt_s(item, "requested_by").unwrap_or_default(),
        state: PendingState::parse(&opt_s(item, "state").unwrap_or_default()),
        created_at: opt_n(item, "created_at").unwrap_or(0),
        issued_serial: opt_s(item, "issued_serial"),
    }
}

fn device(item: &Item) -> Device {
    Device {
        device: NewDevice {
            id: opt_s(item, "id").unwrap_or_default(),
            token_hash: opt_s(item, "token_hash").unwrap_or_default(),
            label: opt_s(item, "label").unwrap_or_default(),
            thing_name: opt_s(item, "thing_name"),
            policy: opt_s(item, "policy"),
            edge_ca: item.get("edge_ca").and_then(|v| v.as_bool().ok()) == Some(&true),
        },
        state: DeviceState::parse(&opt_s(item, "state").unwrap_or_default()),
        created_at: opt_n(item, "created_at").unwrap_or(0),
        enrolled_at: opt_n(item, "enrolled_at"),
        cert_serial: opt_s(item, "cert_serial"),
        cert_id: opt_s(item, "cert_id"),
        cert_fingerprint: opt_s(item, "cert_fingerprint"),
        cert_not_after: opt_n(item, "cert_not_after"),
        failed_attempts: opt_n(item, "failed_attempts").unwrap_or(0) as u32,
        locked_until: opt_n(item, "locked_until"),
    }
}

fn sdk<E, R>(operation: &str, error: SdkError<E, R>) -> RegistryError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    RegistryError::Database(format!(
        "DynamoDB {operation}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&error)
    ))
}

fn build(error: aws_sdk_dynamodb::error::BuildError) -> RegistryError {
    RegistryError::Database(format!("DynamoDB request: {error}"))
}

/// The item that stores `rotation`.
fn rotation_item(rotation: &Rotation) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(format!("rotation#{}", rotation.client_id)));
    item.insert("client_id".into(), s(&rotation.client_id));
    item.insert("serial".into(), s(&rotation.serial));
    item.insert("state".into(), s(rotation.state.as_str()));
    item.insert("attempts".into(), n(rotation.attempts.into()));
    if let Some(error) = &rotation.last_error {
        item.insert("last_error".into(), s(error));
    }
    if let Some(serial) = &rotation.new_serial {
        item.insert("new_serial".into(), s(serial));
    }
    item.insert("requested_at".into(), n(rotation.requested_at));
    item.insert("updated_at".into(), n(rotation.updated_at));
    item.insert("next_attempt_at".into(), n(rotation.next_attempt_at));
    item
}
