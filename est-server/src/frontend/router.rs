//! Maps request paths to EST operations (RFC 7030 §3.2.2).
//!
//! `/.well-known/est/<op>` and `/.well-known/est/<label>/<op>`. A label is
//! exactly one path segment of a restricted alphabet; percent-escapes, empty
//! segments, `.`/`..` and anything longer are not labels, so nothing can
//! escape the EST tree.

pub use crate::authority::operation::Operation;

/// The operation a path segment names.
fn operation_from_segment(segment: &str) -> Option<Operation> {
    Some(match segment {
        "cacerts" => Operation::CaCerts,
        "simpleenroll" => Operation::SimpleEnroll,
        "simplereenroll" => Operation::SimpleReenroll,
        "csrattrs" => Operation::CsrAttrs,
        "serverkeygen" => Operation::ServerKeyGen,
        _ => return None,
    })
}

/// A routed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The label, or `None` for the unlabelled path.
    pub label: Option<&'a str>,
    /// The operation.
    pub operation: Operation,
}

/// Why a path could not be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not an EST path (404).
    NotFound,
    /// An EST path used with the wrong method (405, with `Allow`).
    MethodNotAllowed(&'static str),
}

const PREFIX: &str = "/.well-known/est/";

/// Routes `method` + `path` (without query string).
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, RouteError> {
    let rest = path.strip_prefix(PREFIX).ok_or(RouteError::NotFound)?;
    let (label, op) = match rest.split_once('/') {
        None => (None, rest),
        Some((label, op)) => {
            if !is_valid_label(label) {
                return Err(RouteError::NotFound);
            }
            (Some(label), op)
        }
    };
    let operation = operation_from_segment(op).ok_or(RouteError::NotFound)?;
    if method != operation.method() {
        return Err(RouteError::MethodNotAllowed(operation.method()));
    }
    Ok(Route { label, operation })
}

/// A label is 1–64 characters of `A-Z a-z 0-9 . _ -`, and not `.` or `..`.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label != "."
        && label != ".."
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_unlabelled_and_labelled_paths() {
        assert_eq!(
            route("GET", "/.well-known/est/cacerts"),
            Ok(Route {
                label: None,
                operation: Operation::CaCerts
            })
        );
        assert_eq!(
            route("POST", "/.well-known/est/edgeca/simpleenroll"),
            Ok(Route {
                label: Some("edgeca"),
                operation: Operation::SimpleEnroll
            })
        );
    }

    #[test]
    fn anything_else_is_not_found() {
        for path in [
            "/",
            "/.well-known/est",
            "/.well-known/est/",
            "/.well-known/est/unknown",
            "/.well-known/est/../cacerts",
            "/.well-known/est/./cacerts",
            "/.well-known/est/a/b/cacerts",
            "/.well-known/est//cacerts",
            "/.well-known/est/%2e%2e/cacerts",
            "/.well-known/est/cacerts/",
            "/.well-known/est/cacerts/x",
            "/.well-known/EST/cacerts",
        ] {
            assert_eq!(route("GET", path), Err(RouteError::NotFound), "{path}");
        }
        let long = format!("/.well-known/est/{}/cacerts", "a".repeat(10 * 1024));
        assert_eq!(route("GET", &long), Err(RouteError::NotFound));
    }

    #[test]
    fn wrong_method_is_405() {
        assert_eq!(
            route("POST", "/.well-known/est/cacerts"),
            Err(RouteError::MethodNotAllowed("GET"))
        );
        assert_eq!(
            route("GET", "/.well-known/est/simpleenroll"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
    }
}
