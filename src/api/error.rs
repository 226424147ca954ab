//! HTTP errors as RFC 9457 `application/problem+json`: one type, one mapping from every
//! lower layer's error to a status, and internal errors logged once and answered generically.

use crate::cgroup::CgroupError;
use crate::domain::DomainError;
use crate::engine::EngineError;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem details body. `field` names the request field at fault, when there is one.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[schema(minimum = 100, maximum = 599)]
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("https://tenantd.dev/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    pub fn field(mut self, f: impl Into<String>) -> Self {
        self.field = Some(f.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", detail).field(field)
    }

    /// The 404 of a path no route has (the router's fallback, and what a scoped token gets
    /// for a host-wide endpoint).
    pub fn no_endpoint(path: &str) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no such endpoint: {path}; see /v1/openapi.json"),
        )
    }

    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "tenantd hit an internal error; the details are in the daemon's log",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

impl From<DomainError> for Problem {
    fn from(e: DomainError) -> Self {
        let (status, kind) = match &e {
            DomainError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-value"),
            DomainError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            DomainError::NotFound { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown-reference"),
        };
        Problem::new(status, kind, e.message().to_string()).field(e.field())
    }
}

fn kernel(e: CgroupError) -> Problem {
    let detail = format!("{e}: {}", e_source(&e));
    match (&e, e.errno()) {
        (CgroupError::Unsupported { .. }, _) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported-by-host",
            e.to_string(),
        ),
        (
            _,
            Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::ENODEV) | Some(libc::EOPNOTSUPP),
        ) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "kernel-refused",
            format!("the kernel refused the value, nothing was stored: {detail}"),
        ),
        (_, Some(libc::EBUSY)) => Problem::new(
            StatusCode::CONFLICT,
            "kernel-busy",
            format!("the kernel answered busy, nothing was stored: {detail}"),
        ),
        _ => {
            tracing::error!("cgroup operation failed: {detail}");
            Problem::internal()
        }
    }
}

fn e_source(e: &CgroupError) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Domain(d) => d.into(),
            EngineError::Kernel { source } => kernel(source),
            EngineError::NotFound(n) => Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("tenant '{n}' does not exist"),
            )
            .field("name"),
            EngineError::Conflict { field, message } => {
                Problem::new(StatusCode::CONFLICT, "conflict", message).field(field)
            }
            EngineError::BadPid { message, .. } => Problem::invalid("pid", message),
            EngineError::NotPermitted { field, message } => {
                Problem::new(StatusCode::FORBIDDEN, "not-permitted", message).field(field)
            }
            // Logged by the store once, when writes start failing; the store wrote nothing.
            EngineError::Store(e @ crate::store::StoreError::Full { .. }) => Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                e.to_string(),
            ),
            EngineError::Fleet(e @ crate::store::fleet::FleetError::Unreachable { .. }) => {
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    format!(
                        "{e}: the change was not made; this node keeps enforcing the desired state it holds; retry when the store is back"
                    ),
                )
                .field("store")
            }
            e @ (EngineError::Store(_) | EngineError::Join(_) | EngineError::Fleet(_)) => {
                tracing::error!(
                    "{e}: {:?}",
                    std::error::Error::source(&e).map(|s| s.to_string())
                );
                Problem::internal()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_the_kernel_does_not_permit_is_403_naming_pid() {
        let p = Problem::from(EngineError::NotPermitted {
            field: "pid".into(),
            message: "the kernel does not let tenantd move PID 42: Permission denied".into(),
        });
        assert_eq!(
            (p.status, p.kind.as_str(), p.field.as_deref()),
            (
                403,
                "https://tenantd.dev/problems/not-permitted",
                Some("pid")
            )
        );
        assert!(p.detail.contains("Permission denied"), "{}", p.detail);
    }
}
