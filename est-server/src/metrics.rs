//! Prometheus metrics, and the admin listener that serves them with
//! `/healthz` and `/readyz`.
//!
//! Series (all prefixed `est_`):
//! * `enrollments_total{label,operation,status}` — EST enrollment answers;
//! * `enrollment_duration_seconds{label,operation}` — their latency;
//! * `backend_errors_total{label}` — CA backend failures;
//! * `certificates_expiring{within}` — active certificates ending within 7 and 30 days;
//! * `rotations{state}` — MQTT rotation records by state;
//! * `rotation_events_total{event}` — orchestrator events (requested, issued,
//!   acknowledged, failed, refused, resent, duplicate: a device message
//!   another server was already handling);
//! * `open_connections{listener}` — connections open now on the `est` and
//!   `admin` listeners;
//! * `connections_refused_total{listener,reason}` — connections closed at
//!   accept: `per_address` (over `limits.max_connections_per_address`) or
//!   `busy` (admin listener over `limits.admin_max_connections`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as MetricRegistry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::frontend::listener::{BackoffListener, WriteTimeout};
use crate::registry::{unix_now, Registry, RotationState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnrollmentLabels {
    label: String,
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    label: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelOnly {
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Within {
    within: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: String,
}

/// Every series the server exports, plus the readiness flags.
pub struct Metrics {
    registry: MetricRegistry,
    enrollments: Family<EnrollmentLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    backend_errors: Family<LabelOnly, Counter>,
    expiring: Family<Within, Gauge>,
    rotations: Family<StateLabel, Gauge>,
    rotation_events: Family<EventLabel, Counter>,
    open_connections: Family<ListenerLabel, Gauge>,
    refused_connections: Family<RefusedLabels, Counter>,
    /// False while the rotation orchestrator is enabled but not connected.
    pub broker_connected: AtomicBool,
    /// Whether a rotation orchestrator runs (then readiness needs the broker).
    pub rotation_enabled: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Self {
        let mut registry = MetricRegistry::with_prefix("est");
        let enrollments = Family::<EnrollmentLabels, Counter>::default();
        registry.register(
            "enrollments",
            "EST enrollment answers by label, operation and HTTP status",
            enrollments.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register(
            "enrollment_duration_seconds",
            "EST enrollment latency",
            latency.clone(),
        );
        let backend_errors = Family::<LabelOnly, Counter>::default();
        registry.register(
            "backend_errors",
            "CA backend failures by label",
            backend_errors.clone(),
        );
        let expiring = Family::<Within, Gauge>::default();
        registry.register(
            "certificates_expiring",
            "Active certificates whose validity ends within the window (already expired ones included)",
            expiring.clone(),
        );
        let rotations = Family::<StateLabel, Gauge>::default();
        registry.register(
            "rotations",
            "MQTT rotation records by state",
            rotations.clone(),
        );
        let rotation_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "rotation_events",
            "MQTT rotation orchestrator events",
            rotation_events.clone(),
        );
        let open_connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "open_connections",
            "Connections open now, by listener",
            open_connections.clone(),
        );
        let refused_connections = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because a connection limit was reached",
            refused_connections.clone(),
        );
        Self {
            registry,
            enrollments,
            latency,
            backend_errors,
            expiring,
            rotations,
            rotation_events,
            open_connections,
            refused_connections,
            broker_connected: AtomicBool::new(false),
            rotation_enabled: AtomicBool::new(false),
        }
    }

    /// Counts one enrollment answer and its latency.
    pub fn enrollment(&self, label: &str, operation: &str, status: u16, elapsed: Duration) {
        self.enrollments
            .get_or_create(&EnrollmentLabels {
                label: label.to_owned(),
                operation: operation.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                label: label.to_owned(),
                operation: operation.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one CA backend failure.
    pub fn backend_error(&self, label: &str) {
        self.backend_errors
            .get_or_create(&LabelOnly {
                label: label.to_owned(),
            })
            .inc();
    }

    /// Counts one rotation orchestrator event.
    pub fn rotation_event(&self, event: &str) {
        self.rotation_events
            .get_or_create(&EventLabel {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Counts one open connection on `listener` until the guard is dropped.
    pub fn connection_opened(&self, listener: &str) -> OpenConnection {
        let gauge = self
            .open_connections
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Counts one connection closed at accept on `listener` for `reason`.
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.refused_connections
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Re-reads the registry-derived gauges.
    pub async fn refresh(&self, registry: &dyn Registry) {
        let now = unix_now();
        for (within, days) in [("7d", 7), ("30d", 30)] {
            match registry.count_expiring_before(now + days * 86_400).await {
                Ok(count) => {
                    self.expiring
                        .get_or_create(&Within {
                            within: within.to_owned(),
                        })
                        .set(count as i64);
                }
                Err(e) => tracing::warn!(error = %e, "metrics: registry unavailable"),
            }
        }
        if let Ok(rotations) = registry.list_rotations(usize::MAX).await {
            for state in RotationState::ALL {
                let count = rotations.iter().filter(|r| r.state == state).count();
                self.rotations
                    .get_or_create(&StateLabel {
                        state: state.as_str().to_owned(),
                    })
                    .set(count as i64);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// One connection counted in `est_open_connections`; uncounted on drop.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (plain HTTP;
/// bind it to a private interface). Prints `admin listening on <addr>`.
///
/// Requests get `limits.header_timeout` to arrive (also the idle limit) and
/// answers `limits.write_timeout` to make progress; over
/// `limits.admin_max_connections` new connections are closed at once.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    registry: Arc<dyn Registry>,
    limits: Limits,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listener (metrics, health)");
    println!("admin listening on {local}");
    let mut listener = BackoffListener::new(listener, "admin");
    let permits = Arc::new(Semaphore::new(limits.admin_max_connections));
    loop {
        let (stream, peer) = listener.accept().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin listener busy; connection closed");
            metrics.connection_refused("admin", "busy");
            continue;
        };
        let open = metrics.connection_opened("admin");
        let metrics = metrics.clone();
        let registry = registry.clone();
        let stream = WriteTimeout::new(stream, limits.write_timeout);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(admin(request, &metrics, &*registry).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop((open, permit));
        });
    }
}

async fn admin(
    request: Request<Incoming>,
    metrics: &Metrics,
    registry: &dyn Registry,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            metrics.refresh(registry).await;
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness(metrics, registry).await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{reason}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Ready when the registry answers and, with rotation on, the broker is connected.
async fn readiness(metrics: &Metrics, registry: &dyn Registry) -> Result<(), String> {
    let probe = tokio::time::timeout(Duration::from_secs(5), registry.count_expiring_before(0));
    match probe.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("registry unavailable: {e}")),
        Err(_) => return Err("registry did not answer within 5 s".into()),
    }
    if metrics.rotation_enabled.load(Ordering::Relaxed)
        && !metrics.broker_connected.load(Ordering::Relaxed)
    {
        return Err("rotation enabled but the MQTT broker is not connected".into());
    }
    Ok(())
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}
