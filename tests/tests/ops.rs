//! `ops/`: the Grafana dashboard and the Prometheus alerting rules name only
//! series the server really exports. A panel or rule with a misspelt or
//! removed metric fails here.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use est_e2e::*;

fn ops_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(relative)
}

/// Every `est_…` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(found) = expr[i..].find("est_") {
        let start = i + found;
        let mut end = start + "est_".len();
        if start > 0 && ident(bytes[start - 1]) {
            i = end;
            continue;
        }
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        names.push(expr[start..end].to_owned());
        i = end;
    }
    names
}

/// The series names a scrape can hold: every sample's name, plus the names
/// each `# TYPE` line implies (a counter `x` is sampled as `x_total`, a
/// histogram as `x_bucket`, `x_sum` and `x_count`), so families with no
/// series yet (backend errors, refusals, rotation events) count too.
/// Returns those names and the declared families.
fn exposed(metrics: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("bad TYPE line: {line}");
            };
            families.insert(family.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    (names, families)
}

/// The family a sampled name belongs to.
fn family_of<'a>(name: &'a str, families: &BTreeSet<String>) -> Option<&'a str> {
    ["", "_total", "_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| families.contains(*base))
}

/// Every PromQL string of the dashboard: panel targets' `expr` and the
/// templating variables' `query`.
fn dashboard_exprs(value: &serde_json::Value, key: Option<&str>, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if matches!(key, Some("expr") | Some("query")) => {
            out.push(s.clone())
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_exprs(item, key, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                dashboard_exprs(v, Some(k), out);
            }
        }
        _ => {}
    }
}

/// The alert rules as JSON, read by python3's YAML parser (a real YAML
/// check); `None` when python3 or its `yaml` module is missing.
fn alert_rules_via_python(path: &std::path::Path) -> Option<serde_json::Value> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .ok()?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("No module named"),
            "{} is not valid YAML: {stderr}",
            path.display()
        );
        return None;
    }
    Some(serde_json::from_slice(&output.stdout).expect("python3 wrote JSON"))
}

fn alert_exprs(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let Some(rules) = alert_rules_via_python(path) else {
        eprintln!("SKIP YAML structure check: python3 with PyYAML not available; reading expr: lines as text");
        return text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(|e| e.trim().to_owned())
            .collect();
    };
    let groups = rules["groups"].as_array().expect("top-level groups list");
    assert!(!groups.is_empty());
    let mut exprs = Vec::new();
    let mut alerts = BTreeSet::new();
    for group in groups {
        let name = group["name"].as_str().expect("group name");
        let rules = group["rules"].as_array().expect("group rules list");
        assert!(!rules.is_empty(), "group {name} has no rules");
        for rule in rules {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            assert!(alerts.insert(alert.to_owned()), "alert {alert} twice");
            let expr = rule["expr"].as_str().expect("alert expr");
            assert!(
                rule["for"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(['s', 'm', 'h'])),
                "{alert}: for"
            );
            assert!(rule["labels"]["severity"].is_string(), "{alert}: severity");
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert}: summary"
            );
            exprs.push(expr.to_owned());
        }
    }
    // The text reading sees the same expressions (they stay on one line).
    let lines = text
        .lines()
        .filter(|l| l.trim().starts_with("expr:"))
        .count();
    assert_eq!(lines, exprs.len(), "one-line expr: per rule");
    exprs
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    // The extractor itself: histogram suffixes stay, label values don't count.
    assert_eq!(
        metric_names(r#"rate(est_a_bucket{listener="est"}[5m]) / test_b + est_c"#),
        ["est_a_bucket", "est_c"]
    );

    let server = Server::start_with(
        &format!("admin_listen = \"127.0.0.1:0\"\n{}", config_with("")),
        None,
    );
    let work = tempfile::tempdir().unwrap();
    let csr = Csr::new(work.path(), "ops", KeyType::P256, "/CN=ops-dashboard", &[]);
    enroll_basic(&server, None, &csr, &work.path().join("c.pem"));
    let response = curl(&[format!("http://{}/metrics", server.admin_addr())]);
    assert_eq!(response.status, 200, "/metrics: {}", response.stderr);
    let metrics = response.text();
    let (names, families) = exposed(&metrics);
    assert!(
        names.contains("est_enrollments_total")
            && names.contains("est_enrollment_duration_seconds_bucket"),
        "{metrics}"
    );
    // A misspelt name would be caught.
    assert!(!names.contains("est_enrollment_duration_seconds"));

    let dashboard_path = ops_file("grafana/est-server.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_path).unwrap())
            .expect("dashboard is JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, None, &mut exprs);
    exprs.retain(|e| e != "prometheus");
    assert!(exprs.len() >= 10, "{exprs:?}");

    let alerts_path = ops_file("prometheus/est-server-alerts.yml");
    let alerts = alert_exprs(&alerts_path);
    assert!(alerts.len() >= 5, "{alerts:?}");

    let mut missing = Vec::new();
    let mut on_dashboard = BTreeSet::new();
    for (file, exprs) in [(&dashboard_path, &exprs), (&alerts_path, &alerts)] {
        for expr in exprs.iter() {
            for name in metric_names(expr) {
                if !names.contains(&name) {
                    missing.push(format!("{}: {name} in {expr}", file.display()));
                } else if file == &dashboard_path {
                    on_dashboard.extend(family_of(&name, &families).map(str::to_owned));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "metrics not exported by the server:\n{}\n--- /metrics ---\n{metrics}",
        missing.join("\n")
    );
    // And the dashboard shows every family the server exports.
    let unshown: Vec<&String> = families.difference(&on_dashboard).collect();
    assert!(unshown.is_empty(), "not on the dashboard: {unshown:?}");
}
