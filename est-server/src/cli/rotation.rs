//! `rotate` and `rotations`: server-driven MQTT rotation from the command line.

use anyhow::Context;

use super::{format_time, Target};

pub(crate) async fn rotate(
    target: Target,
    window: std::time::Duration,
    device: Option<String>,
) -> anyhow::Result<()> {
    use est_server::rotation::{confirmed_audit, mqtt};
    let config = target.config()?;
    let rotation = config
        .rotation
        .clone()
        .context("the config has no [rotation] section")?;
    if !rotation.enabled {
        eprintln!(
            "note: rotation.enabled is false, so no running server handles the devices' answers"
        );
    }
    let ca = est_server::server::open_ca(&config).await?;
    let registry = est_server::server::open_registry(&config).await?;
    let pair = mqtt::client_pair(&rotation, &ca, &config.ca.dir).await?;
    let trust = est_server::server::broker_trust(&rotation, &ca)?;
    let client_id = format!("{}-cli-{}", rotation.client_id, std::process::id());
    let outcome = confirmed_audit(
        &*registry,
        &rotation,
        &client_id,
        &trust,
        &pair,
        None,
        window,
        device.as_deref(),
    )
    .await?;
    let report = outcome.report;
    for id in &report.requested {
        println!("requested  {id}");
    }
    println!(
        "{} devices asked for a CSR, {} backing off, {} deferred (max_in_flight), {} without a client id, {} already expired",
        report.requested.len(),
        report.backing_off,
        report.deferred,
        report.without_client_id,
        report.expired
    );
    if !outcome.unconfirmed.is_empty() {
        anyhow::bail!(
            "the broker did not confirm the csr_req of {} devices (not counted; run again)",
            outcome.unconfirmed.len()
        );
    }
    Ok(())
}

pub(crate) async fn rotations(target: Target, json: bool) -> anyhow::Result<()> {
    let registry = target.registry().await?;
    let all = registry.list_rotations(usize::MAX).await?;
    if json {
        let items: Vec<serde_json::Value> = all
            .iter()
            .map(|r| {
                serde_json::json!({
                    "clientId": r.client_id,
                    "serial": r.serial,
                    "state": r.state.as_str(),
                    "attempts": r.attempts,
                    "lastError": r.last_error,
                    "newSerial": r.new_serial,
                    "requestedAt": format_time(r.requested_at),
                    "updatedAt": format_time(r.updated_at),
                    "nextAttemptAt": format_time(r.next_attempt_at),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no rotations");
    }
    for r in all {
        println!(
            "{:<24} {:<12} attempts={} serial={} new={} updated={} error={}",
            r.client_id,
            r.state.as_str(),
            r.attempts,
            r.serial,
            r.new_serial.as_deref().unwrap_or("-"),
            format_time(r.updated_at),
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
