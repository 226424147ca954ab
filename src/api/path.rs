//! Typed path parameters: `TenantPath`, the `{name}` of every `/v1/tenants/{name}...` route,
//! parsed into a `TenantName` before the handler runs. A name that does not parse is refused
//! as `TenantName::parse` refuses it (problem+json 422, `field: "name"`), and so is one that
//! is not UTF-8 once percent-decoded; the OpenAPI parameter comes from the same type.

use super::error::Problem;
use crate::domain::TenantName;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{Ref, Required};

/// The tenant a `/v1/tenants/{name}...` request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPath(pub TenantName);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                Problem::invalid(
                    "name",
                    format!(
                        "the tenant name cannot be read: {}: use 1-63 characters from a-z, 0-9 and '-'",
                        e.body_text()
                    ),
                )
            })?;
        TenantName::parse(&name)
            .map(TenantPath)
            .map_err(Problem::from)
    }
}

/// `{name}`: a required path parameter whose schema is `TenantName`'s.
impl utoipa::IntoParams for TenantPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("name")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(Ref::from_schema_name("TenantName")))
                .build(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// (status, body) of `GET /t/{name}` answered by a handler taking a `TenantPath`.
    async fn get_name(name: &str) -> (StatusCode, serde_json::Value) {
        let app = Router::new().route(
            "/t/{name}",
            get(|TenantPath(n): TenantPath| async move {
                serde_json::json!({ "name": n.as_str() })
                    .to_string()
                    .into_response()
            }),
        );
        let req = Request::get(format!("/t/{name}"))
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn names_parse_or_are_refused_naming_the_field() {
        assert_eq!(get_name("web-1").await.1["name"], "web-1");
        assert_eq!(get_name("%77eb").await.1["name"], "web", "percent-decoded");
        for bad in ["Acme", "a..b", "%C3%A9", "%FF", "tasks"] {
            let (status, b) = get_name(bad).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {b}");
            assert_eq!(b["field"], "name", "{bad}: {b}");
            assert_eq!(b["type"], get_name("Acme").await.1["type"], "{bad}: {b}");
        }
    }
}
