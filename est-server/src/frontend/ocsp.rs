//! The OCSP responder (RFC 6960) on the EST port: `POST /ocsp` with a DER
//! `OCSPRequest`, or `GET /ocsp/<base64 of it, URL-encoded>`. Statuses come
//! from the registry — good, revoked (with the time and reason: operator
//! revocation `unspecified`, a retired predecessor `superseded`) or unknown
//! (not issued by the device CA) — and are signed by the issuing CA.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use ca_backends::ocsp::{ocsp_error, OcspQuery, Status};
use ca_backends::CaError;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use x509_cert::ext::pkix::CrlReason;
use x509_ocsp::OcspResponseStatus;

use crate::frontend::http::AppState;
use crate::registry::CertState;

/// Path of the responder.
pub const OCSP_PATH: &str = "/ocsp";

/// How long an answer may be cached (nextUpdate − thisUpdate).
const LIFETIME: Duration = Duration::from_secs(3600);

/// Whether `path` is the responder's (`/ocsp` or `/ocsp/<request>`).
pub fn is_ocsp_path(path: &str) -> bool {
    path == OCSP_PATH || path.starts_with("/ocsp/")
}

/// Answers one OCSP request.
pub async fn handle(state: &AppState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let der = match read_request(state, request).await {
        Ok(der) => der,
        Err(response) => return response,
    };
    let query = match OcspQuery::parse(&der) {
        Ok(query) => query,
        Err(_) => {
            return answer(
                StatusCode::OK,
                ocsp_error(OcspResponseStatus::MalformedRequest),
            )
        }
    };
    let result = async {
        let mut statuses = Vec::new();
        for serial in query.serials(&state.local_ca) {
            statuses.push(match serial {
                Some(serial) => status_of(state, &serial).await?,
                None => Status::Unknown,
            });
        }
        state
            .local_ca
            .ocsp_response(&query, &statuses, LIFETIME)
            .await
    }
    .await;
    match result {
        Ok(body) => answer(StatusCode::OK, body),
        Err(CaError::Unavailable(reason)) => {
            tracing::warn!(%reason, "OCSP: signer unavailable; tryLater");
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

async fn status_of(state: &AppState, serial: &str) -> Result<Status, CaError> {
    let unavailable = |e: crate::registry::RegistryError| CaError::Unavailable(e.to_string());
    let Some(record) = state
        .registry
        .find_by_serial(serial)
        .await
        .map_err(unavailable)?
    else {
        return Ok(Status::Unknown);
    };
    if record.certificate.backend_ref.is_some() {
        return Ok(Status::Unknown);
    }
    if record.state != CertState::Revoked && record.retired_at.is_none() {
        return Ok(Status::Good);
    }
    let at = state
        .registry
        .local_revocations()
        .await
        .map_err(unavailable)?
        .into_iter()
        .find(|(s, _)| s == serial)
        .map(|(_, at)| UNIX_EPOCH + Duration::from_secs(at.max(0) as u64))
        .unwrap_or_else(SystemTime::now);
    let reason = if record.state == CertState::Revoked {
        CrlReason::Unspecified
    } else {
        CrlReason::Superseded
    };
    Ok(Status::Revoked { at, reason })
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
