//! Revocation status over HTTP: the OCSP responder (RFC 6960) — `POST /ocsp`
//! with a DER `OCSPRequest`, or `GET /ocsp/<base64 of it, URL-encoded>` —
//! and the CRLs: `GET /crl` (device CA) and `GET /crl/<name>` (`[cas.<name>]`).
//! Served on the EST port and, with `[ocsp] listen`, on a plain-HTTP
//! listener of their own (OCSP and CRL fetchers such as nginx's stapling
//! speak HTTP, not HTTPS). What the answers say is
//! [`crate::authority::revocation`]'s.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use ca_backends::ocsp::ocsp_error;
use ca_backends::CaError;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use x509_ocsp::OcspResponseStatus;

use crate::frontend::http::AppState;
use crate::frontend::listener::{BackoffListener, WriteTimeout};

/// Path of the responder.
pub const OCSP_PATH: &str = "/ocsp";

/// Path of the device CA's CRL (DER, `application/pkix-crl`); a further
/// hierarchy's is `/crl/<name>`.
pub const CRL_PATH: &str = "/crl";

/// Whether `path` is the responder's (`/ocsp` or `/ocsp/<request>`).
pub fn is_ocsp_path(path: &str) -> bool {
    path == OCSP_PATH || path.starts_with("/ocsp/")
}

/// The CA whose CRL `path` names (`/crl` → `device`, `/crl/<name>`).
pub fn crl_path_ca(path: &str) -> Option<&str> {
    match path.strip_prefix(CRL_PATH)? {
        "" => Some(crate::config::DEVICE_CA),
        rest => rest.strip_prefix('/').filter(|name| !name.is_empty()),
    }
}

/// Answers one OCSP request.
pub async fn handle(state: &AppState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let der = match read_request(state, request).await {
        Ok(der) => der,
        Err(response) => return response,
    };
    match state.revocation.ocsp(&der).await {
        Ok(body) => answer(StatusCode::OK, body),
        Err(CaError::Rejected(_)) => answer(
            StatusCode::OK,
            ocsp_error(OcspResponseStatus::MalformedRequest),
        ),
        Err(CaError::Unavailable(reason)) => {
            tracing::warn!(%reason, "OCSP: registry or signer unavailable; tryLater");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                ocsp_error(OcspResponseStatus::TryLater),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "OCSP: internal error");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                ocsp_error(OcspResponseStatus::InternalError),
            )
        }
    }
}

/// The current CRL of the CA `name`.
pub async fn crl(
    state: &AppState,
    name: &str,
) -> Result<Response<Full<Bytes>>, crate::error::EstError> {
    let der = state.revocation.crl(name).await?;
    let mut response = Response::new(Full::new(Bytes::from(der)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    Ok(response)
}

/// The DER request from a POST body or a GET path; an HTTP error otherwise.
async fn read_request(
    state: &AppState,
    request: Request<Incoming>,
) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    let malformed = || {
        answer(
            StatusCode::OK,
            ocsp_error(OcspResponseStatus::MalformedRequest),
        )
    };
    if request.method() == hyper::Method::GET {
        let encoded = request
            .uri()
            .path()
            .strip_prefix("/ocsp/")
            .unwrap_or_default()
            .replace("%2B", "+")
            .replace("%2b", "+")
            .replace("%2F", "/")
            .replace("%2f", "/")
            .replace("%3D", "=")
            .replace("%3d", "=");
        return base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| malformed());
    }
    if request.method() != hyper::Method::POST {
        return Err(answer(StatusCode::METHOD_NOT_ALLOWED, Vec::new()));
    }
    let body = tokio::time::timeout(
        state.limits.body_timeout,
        crate::frontend::http::read_limited(request.into_body(), state.limits.max_body_bytes),
    )
    .await;
    match body {
        Ok(Ok(bytes)) => Ok(bytes.to_vec()),
        _ => Err(malformed()),
    }
}

fn answer(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/ocsp-response"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

/// Serves OCSP and the CRLs over plain HTTP on `listener` (bound to
/// `[revocation] listen` before the server reports itself ready) with the
/// EST port's header and write timeouts, at most `max_connections` at once
/// (the rest are closed at once).
pub async fn serve_plain(
    listener: TcpListener,
    state: Arc<AppState>,
    max_connections: usize,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "OCSP/CRL listener (plain HTTP)");
    println!("ocsp listening on {local}");
    let mut listener = BackoffListener::new(listener, "ocsp");
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, peer) = listener.accept().await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "OCSP listener busy; connection closed");
            state.metrics.connection_refused("ocsp", "busy");
            continue;
        };
        let open = state.metrics.connection_opened("ocsp");
        let stream = WriteTimeout::new(stream, state.limits.write_timeout);
        let header_timeout = state.limits.header_timeout;
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let response = if is_ocsp_path(&path) {
                        handle(&state, request).await
                    } else if let (Some(name), &hyper::Method::GET) =
                        (crl_path_ca(&path), request.method())
                    {
                        match crl(&state, name).await {
                            Ok(response) => response,
                            Err(crate::error::EstError::NotFound(_)) => {
                                text(StatusCode::NOT_FOUND, "not found\n")
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "CRL unavailable");
                                text(StatusCode::SERVICE_UNAVAILABLE, "try again later\n")
                            }
                        }
                    } else {
                        text(StatusCode::NOT_FOUND, "not found\n")
                    };
                    Ok::<_, Infallible>(response)
                }
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
