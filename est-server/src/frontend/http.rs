//! The HTTPS listener: TLS accept, HTTP/1.1 via hyper, routing, limits,
//! media types, and turning outcomes into EST responses.
//!
//! Policy lives in [`crate::authority::enroll`]; this module only moves bytes in and
//! out, so that every response carries `Content-Length` (never chunked),
//! header names spelled as real clients compare them ([`crate::frontend::header_case`]),
//! and a plain-text body that says what was wrong.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::http::Extensions;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::authority::auth::{ClientCertificate, Credentials};
use crate::authority::enroll::{EnrollRequest, EnrollService, Label};
use crate::config::Limits;
use crate::error::EstError;
use crate::frontend::listener::{BackoffListener, PerAddress, WriteTimeout};
use crate::frontend::router::{route, Operation, RouteError};
use crate::registry::Registry;
use est_wire::media;

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    /// Labels by registry name (`""` is the unlabelled path).
    pub labels: HashMap<String, Label>,
    /// The enrollment path.
    pub enroll: EnrollService,
    /// Basic realm.
    pub realm: String,
    /// Limits.
    pub limits: Limits,
    /// Makes hyper spell header names exactly (see [`crate::frontend::header_case`]).
    pub header_case: Extensions,
    /// Label whose rules the JSON façades apply, when they are enabled.
    pub cvm_label: Option<String>,
    /// The AWS reference vending machine's API, when the façades are enabled.
    pub getcert: Option<crate::frontend::cvm::Getcert>,
    /// The registry (to note that a successor certificate is in use).
    pub registry: Arc<dyn Registry>,
    /// CRLs and OCSP answers for the local CAs.
    pub revocation: Arc<crate::authority::revocation::Revocation>,
    /// Source of request ids for logs and 5xx bodies.
    pub next_request_id: AtomicU64,
    /// Prometheus series.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Per-connection facts.
struct Connection {
    peer: SocketAddr,
    client_certificate: Option<ClientCertificate>,
    /// RFC 9266 tls-exporter value of this TLS connection.
    channel_binding: Option<[u8; 32]>,
}

/// Accepts connections until `shutdown` resolves.
///
/// At most `limits.max_connections` are served at once (further ones wait
/// in the accept queue) and at most `limits.max_connections_per_address`
/// from one address (further ones are closed before the TLS handshake), so
/// that one client cannot take every slot.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let per_address = PerAddress::new(state.limits.connections_per_address());
    let mut listener = BackoffListener::new(listener, "est");
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Some(address_guard) = per_address.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "too many connections from this address; closed");
            state.metrics.connection_refused("est", "per_address");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let open = state.metrics.connection_opened("est");
            serve_connection(state, acceptor, tcp, peer).await;
            drop((open, address_guard, permit));
        });
    }
}

/// A client certificate refused in the handshake (expired, a CA used as an
/// end entity, an unknown issuer) is worth an operator's attention: it is
/// logged at info with the reason and the address. Other handshake failures
/// (scanners, clients giving up) stay at debug.
fn log_handshake_failure(peer: SocketAddr, error: &std::io::Error) {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(reason)) => {
            tracing::info!(%peer, reason = ?reason, "client certificate refused in the TLS handshake");
        }
        _ => tracing::debug!(%peer, error = %error, "TLS handshake failed"),
    }
}

async fn serve_connection(
    state: Arc<AppState>,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let lifetime = tokio::time::sleep(state.limits.connection_lifetime);
    // Beneath TLS, so that every partial write of a slow reader counts as progress.
    let tcp = WriteTimeout::new(tcp, state.limits.write_timeout);
    let handshake =
        tokio::time::timeout(state.limits.handshake_timeout, acceptor.accept(tcp)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            log_handshake_failure(peer, &e);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let client_certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| {
            chain
                .iter()
                .map(|c| c.clone().into_owned())
                .collect::<Vec<_>>()
        })
        .and_then(ClientCertificate::from_chain);
    // A certificate in use proves that its predecessor may be retired.
    if let Some(certificate) = &client_certificate {
        let registry = state.registry.clone();
        let (serial, fingerprint) = (certificate.serial.clone(), certificate.fingerprint.clone());
        tokio::spawn(async move {
            if let Err(e) = registry
                .mark_predecessor_proven(&serial, &fingerprint)
                .await
            {
                tracing::warn!(error = %e, "could not note certificate use");
            }
        });
    }
    let mut binding = [0u8; 32];
    let exported = tls
        .get_ref()
        .1
        .export_keying_material(&mut binding, b"EXPORTER-Channel-Binding", Some(b""))
        .is_ok();
    let channel_binding = exported.then_some(binding);
    let connection = Arc::new(Connection {
        peer,
        client_certificate,
        channel_binding,
    });
    let header_timeout = state.limits.header_timeout;
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(handle(&state, &connection, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .title_case_headers(true)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection, lifetime);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = &mut lifetime => {
            // Finish the response in progress (bounded by the write timeout), then close.
            tracing::debug!(%peer, "connection lifetime reached; closing");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves one request; never fails (errors become responses).
async fn handle(
    state: &AppState,
    connection: &Connection,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let request_id = state.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id = request_id);
    handle_in_span(state, connection, request, request_id)
        .instrument(span)
        .await
}

async fn handle_in_span(
    state: &AppState,
    connection: &Connection,
    request: Request<Incoming>,
    request_id: u64,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = request.method().clone();
    // Only the path: the query string may carry a device token
    // (`/getcert?deviceToken=…`) and is never logged nor used as a label.
    let path = request.uri().path().to_owned();
    let measured = enrollment_metric_labels(state, method.as_str(), &path);
    let response = if let Some(facade) = facade_at(state, &path) {
        json_facade(state, connection, request, request_id, facade).await
    } else if crate::frontend::status::is_ocsp_path(&path) {
        crate::frontend::status::handle(state, request).await
    } else if let (Some(name), &hyper::Method::GET) = (
        crate::frontend::status::crl_path_ca(&path),
        request.method(),
    ) {
        match crate::frontend::status::crl(state, name).await {
            Ok(response) => response,
            Err(error) => error_response(state, &error, request_id),
        }
    } else {
        match dispatch(state, connection, request).await {
            Ok(response) => response,
            Err(error) => error_response(state, &error, request_id),
        }
    };
    let status = response.status().as_u16();
    if let Some((label, operation)) = measured {
        state
            .metrics
            .enrollment(label, operation, status, started.elapsed());
    }
    if status >= 500 {
        tracing::error!(request_id, peer = %connection.peer, %method, %path, status, "request failed");
    } else {
        tracing::debug!(
            request_id,
            peer = %connection.peer,
            %method,
            %path,
            status,
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
    }
    finish(state, response)
}

/// `(label, operation)` when the request is an enrollment on a configured
/// label (so metric labels cannot be made up by clients).
fn enrollment_metric_labels<'s>(
    state: &'s AppState,
    method: &str,
    path: &str,
) -> Option<(&'s str, &'static str)> {
    if let Some(facade) = facade_at(state, path) {
        let label = state.cvm_label.as_deref()?;
        let (name, _) = state.labels.get_key_value(label)?;
        return Some((name.as_str(), facade.operation()));
    }
    let route = route(method, path).ok()?;
    let operation = match route.operation {
        Operation::SimpleEnroll => "simpleenroll",
        Operation::SimpleReenroll => "simplereenroll",
        Operation::ServerKeyGen => "serverkeygen",
        Operation::CaCerts | Operation::CsrAttrs => return None,
    };
    let (name, _) = state.labels.get_key_value(route.label.unwrap_or(""))?;
    Some((name.as_str(), operation))
}

async fn dispatch(
    state: &AppState,
    connection: &Connection,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, EstError> {
    let path = request.uri().path().to_owned();
    let route = match route(request.method().as_str(), &path) {
        Ok(route) => route,
        Err(RouteError::NotFound) => {
            drain(request.into_body()).await;
            return Err(EstError::NotFound(format!(
                "no EST resource at {}",
                truncate(&path)
            )));
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            let method = request.method().clone();
            drain(request.into_body()).await;
            let mut response = text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here; use {allowed}"),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return Ok(response);
        }
    };
    let label_key = route.label.unwrap_or("");
    let Some(label) = state.labels.get(label_key) else {
        drain(request.into_body()).await;
        return Err(EstError::NotFound(format!(
            "unknown EST label `{label_key}`"
        )));
    };

    match route.operation {
        Operation::CaCerts => {
            let chain = label.backend.ca_certs().await?;
            let der = est_wire::pkcs7::encode_certs_only(&chain).map_err(EstError::internal)?;
            Ok(base64_response(media::PKCS7_MIME, &der))
        }
        Operation::CsrAttrs => Ok(match &label.csrattrs {
            Some(der) => base64_response(media::CSRATTRS, der),
            None => empty_response(StatusCode::NO_CONTENT),
        }),
        Operation::SimpleEnroll | Operation::SimpleReenroll | Operation::ServerKeyGen => {
            let credentials = Credentials {
                authorization: request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.as_bytes().to_vec()),
                client_certificate: connection.client_certificate.clone(),
                peer: Some(connection.peer.ip()),
            };
            let body = read_pkcs10_body(state, request).await?;
            let enrolled = state
                .enroll
                .enroll(EnrollRequest {
                    label,
                    operation: route.operation,
                    credentials,
                    body: &body,
                    channel_binding: connection.channel_binding,
                })
                .await?;
            let der =
                est_wire::pkcs7::encode_certs_only(std::slice::from_ref(&enrolled.certificate))
                    .map_err(EstError::internal)?;
            match &enrolled.private_key {
                None => Ok(base64_response(media::PKCS7_CERTS_ONLY, &der)),
                Some(key) => Ok(server_keygen_response(key, &der)),
            }
        }
    }
}

/// Path of the JSON façade.
const CVM_PATH: &str = "/cvm/v1/certificates";

/// The JSON façades: same enrollment service, JSON in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Facade {
    /// `POST /cvm/v1/certificates`.
    Cvm,
    /// The AWS reference vending machine's `GET`/`POST <getcert_path>`.
    Getcert,
}

impl Facade {
    /// The `operation` metric label.
    fn operation(self) -> &'static str {
        match self {
            Self::Cvm => "cvm",
            Self::Getcert => "getcert",
        }
    }

    /// The methods it answers (`Allow`).
    fn allowed(self) -> &'static str {
        match self {
            Self::Cvm => "POST",
            Self::Getcert => "GET, POST",
        }
    }
}

/// The façade at `path`, if any (`/cvm/v1/certificates` is always routed,
/// so that a server without `[cvm]` says so).
fn facade_at(state: &AppState, path: &str) -> Option<Facade> {
    if path == CVM_PATH {
        Some(Facade::Cvm)
    } else if state.getcert.as_ref().is_some_and(|g| g.path == path) {
        Some(Facade::Getcert)
    } else {
        None
    }
}

async fn json_facade(
    state: &AppState,
    connection: &Connection,
    request: Request<Incoming>,
    request_id: u64,
    facade: Facade,
) -> Response<Full<Bytes>> {
    let method_allowed = match facade {
        Facade::Cvm => request.method() == hyper::Method::POST,
        Facade::Getcert => {
            request.method() == hyper::Method::GET || request.method() == hyper::Method::POST
        }
    };
    if !method_allowed {
        let text = format!(
            "{} is not allowed here; use {}",
            request.method(),
            facade.allowed()
        );
        drain(request.into_body()).await;
        let mut response = json_error(StatusCode::METHOD_NOT_ALLOWED, &text);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(facade.allowed()));
        return response;
    }
    let outcome = async {
        let label = state
            .cvm_label
            .as_ref()
            .and_then(|name| state.labels.get(name))
            .ok_or_else(|| EstError::NotFound("the JSON façade is not enabled".into()))?;
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The reference API took its JSON body whatever the Content-Type.
        if facade == Facade::Cvm && !media::matches(content_type, "application/json") {
            return Err(EstError::UnsupportedMediaType(
                "Content-Type must be application/json".into(),
            ));
        }
        let query = request.uri().query().map(str::to_owned);
        let body = tokio::time::timeout(
            state.limits.body_timeout,
            read_limited(request.into_body(), state.limits.max_body_bytes),
        )
        .await
        .map_err(|_| EstError::Timeout("the request body did not arrive in time".into()))??;
        let peer = Some(connection.peer.ip());
        let json = match (facade, &state.getcert) {
            (Facade::Getcert, Some(getcert)) => serde_json::to_vec(
                &crate::frontend::cvm::handle_getcert(
                    &state.enroll,
                    label,
                    getcert,
                    query.as_deref(),
                    &body,
                    peer,
                    connection.channel_binding,
                )
                .await?,
            ),
            _ => serde_json::to_vec(
                &crate::frontend::cvm::handle(
                    &state.enroll,
                    label,
                    &body,
                    peer,
                    connection.channel_binding,
                )
                .await?,
            ),
        };
        json.map_err(EstError::internal)
    }
    .await;
    match outcome {
        Ok(json) => {
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => {
            // The same status, headers and log line as EST, with a JSON body.
            let text = error_response(state, &error, request_id);
            let message = if error.is_server_fault() {
                format!("the server could not complete the request (request id {request_id})")
            } else {
                error.to_string()
            };
            let mut response = json_error(text.status(), &message);
            for name in [RETRY_AFTER, WWW_AUTHENTICATE] {
                if let Some(value) = text.headers().get(&name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
    }
}

/// `{"error": "<message>"}` with `status`.
fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let json = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Checks the media type and size, then reads the body within the time limit.
async fn read_pkcs10_body(state: &AppState, request: Request<Incoming>) -> Result<Bytes, EstError> {
    let (parts, body) = request.into_parts();
    let limit = state.limits.max_body_bytes;
    if let Err(refusal) = check_body_headers(&parts.headers, limit) {
        // A client waiting for "100 Continue" has sent nothing yet, and a body
        // over the drain cap is cut off anyway: answer at once in both cases.
        let expects_continue = parts.headers.contains_key(hyper::header::EXPECT);
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if !expects_continue && declared <= DRAIN_CAP {
            drain(body).await;
        }
        return Err(refusal);
    }
    tokio::time::timeout(state.limits.body_timeout, read_limited(body, limit))
        .await
        .map_err(|_| EstError::Timeout("the request body did not arrive in time".into()))?
}

fn check_body_headers(headers: &hyper::HeaderMap, limit: usize) -> Result<(), EstError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !media::matches(content_type, media::PKCS10) {
        return Err(EstError::UnsupportedMediaType(format!(
            "Content-Type must be {} (got `{}`)",
            media::PKCS10,
            truncate(content_type)
        )));
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    Ok(())
}

/// Reads at most `limit` bytes; a longer body is drained (within bounds) and refused.
/// Reads a request body of at most `limit` bytes.
pub(crate) async fn read_limited(mut body: Incoming, limit: usize) -> Result<Bytes, EstError> {
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| EstError::BadRequest(format!("could not read the request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > limit {
                drain(body).await;
                return Err(too_large(limit));
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(collected))
}

/// The most a refused body is read to keep the connection from being reset.
const DRAIN_CAP: usize = 1024 * 1024;

/// Reads and discards what is left of a refused request's body — at most
/// 1 MiB for at most 2 s — so that closing the connection does not reset it
/// before the client has read the answer. Larger or slower bodies are cut off.
async fn drain(mut body: Incoming) {
    let discard = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_CAP {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), discard).await;
}

fn too_large(limit: usize) -> EstError {
    EstError::TooLarge(format!("the request body exceeds {limit} bytes"))
}

fn error_response(state: &AppState, error: &EstError, request_id: u64) -> Response<Full<Bytes>> {
    let status = match error {
        EstError::BadRequest(_) => StatusCode::BAD_REQUEST,
        EstError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        EstError::Forbidden(_) => StatusCode::FORBIDDEN,
        EstError::NotFound(_) => StatusCode::NOT_FOUND,
        EstError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        EstError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        EstError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        EstError::Pending { .. } => StatusCode::ACCEPTED,
        EstError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        EstError::Conflict { .. } => StatusCode::CONFLICT,
        EstError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        EstError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        EstError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = if error.is_server_fault() {
        tracing::error!(request_id, error = %error, "internal fault");
        format!("the server could not complete the request (request id {request_id})")
    } else {
        tracing::info!(request_id, status = status.as_u16(), reason = %error, "refused");
        error.to_string()
    };
    let mut response = text_response(status, message);
    let headers = response.headers_mut();
    match error {
        EstError::Unauthorized(_) => {
            let challenge = format!("Basic realm=\"{}\"", state.realm.replace('"', ""));
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(WWW_AUTHENTICATE, value);
            }
        }
        EstError::Pending {
            retry_after_secs, ..
        }
        | EstError::TooManyRequests {
            retry_after_secs, ..
        }
        | EstError::Conflict {
            retry_after_secs, ..
        } => {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        EstError::Unavailable(_) => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("30"));
        }
        _ => {}
    }
    response
}

fn base64_response(content_type: &'static str, der: &[u8]) -> Response<Full<Bytes>> {
    let body = est_wire::body::encode(der);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-transfer-encoding",
        HeaderValue::from_static(media::TRANSFER_ENCODING_BASE64),
    );
    response
}

/// `multipart/mixed`: the PKCS#8 key, then the certs-only bundle (RFC 7030 §4.4.2).
fn server_keygen_response(key_pkcs8: &[u8], certs_only: &[u8]) -> Response<Full<Bytes>> {
    let mut random = [0u8; 12];
    let _ = aws_lc_rs::rand::fill(&mut random);
    let boundary = format!("est-{}", hex::encode(random));
    let key_b64 = zeroize::Zeroizing::new(est_wire::body::encode(key_pkcs8));
    let body = est_wire::multipart::encode(
        &boundary,
        &[
            (media::PKCS8, key_b64.as_bytes()),
            (
                media::PKCS7_CERTS_ONLY,
                est_wire::body::encode(certs_only).as_bytes(),
            ),
        ],
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(value) =
        HeaderValue::from_str(&format!("{}; boundary={boundary}", media::MULTIPART_MIXED))
    {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn text_response(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Adds what every response carries: the header spelling and an explicit length.
fn finish(state: &AppState, mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    use hyper::body::Body;
    let length = response.body().size_hint().exact().unwrap_or(0);
    if response.status() != StatusCode::NO_CONTENT {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    *response.extensions_mut() = state.header_case.clone();
    response
}

/// Shortens client-supplied text before it is echoed back.
fn truncate(text: &str) -> String {
    const MAX: usize = 120;
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX)
        .collect();
    if text.chars().count() > MAX {
        format!("{cleaned}…")
    } else {
        cleaned
    }
}
