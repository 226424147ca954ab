//! A JSON body extractor whose every rejection is a problem+json naming the field at fault.

use super::error::Problem;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

/// Like `axum::Json`, but errors say which field is wrong, as problem+json.
pub struct JsonBody<T>(pub T);

/// Deserializes `bytes`, naming the path of the first bad field.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Problem::bad_request(format!("the body is not valid JSON: {inner}"))
            }
            Category::Data => {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                let msg = inner.to_string();
                // serde_json appends " at line L column C"; keep the message, it helps.
                Problem::invalid(&field, format!("{field}: {msg}"))
            }
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !(essence == "application/json"
            || essence == "application/merge-patch+json"
            || essence.ends_with("+json"))
        {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!("send the body as application/json (got '{ct}')"),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "the body is larger than the daemon accepts (max_body_bytes)",
                )
            } else {
                Problem::bad_request(format!("cannot read the body: {e}"))
            }
        })?;
        from_slice(&bytes).map(JsonBody)
    }
}
