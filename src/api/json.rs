//! A strict JSON body extractor whose every rejection is a problem+json naming the field at
//! fault: `application/json` (or `application/merge-patch+json` for PATCH) in UTF-8 only, one
//! JSON document and nothing after it, and an object wherever the schema has an object.

use super::error::Problem;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Like `axum::Json`, but strict, and errors say which field is wrong, as problem+json.
pub struct JsonBody<T>(pub T);

/// Deserializes `bytes` strictly, naming the path of the first bad field.
///
/// serde's derived structs also accept a JSON array (`[1]` for `{"pid": 1}`), and serde_json
/// does not look past the document. So the document must end where the JSON ends, and after
/// deserializing, `T` is serialized back and compared with the input: wherever `T` is an
/// object, the input must have been one too (`objects_where_objects`).
pub fn from_slice<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
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
    })?;
    de.end().map_err(|e| {
        Problem::bad_request(format!(
            "the body is not valid JSON: {e}: send one JSON document and nothing after it"
        ))
    })?;
    // The input parsed once already, so it parses as a Value too.
    let input: Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    let back = serde_json::to_value(&value).map_err(|e| {
        tracing::error!("cannot serialize a parsed request body back to JSON: {e}");
        Problem::internal()
    })?;
    objects_where_objects(&input, &back, "")?;
    Ok(value)
}

/// Refuses an array in `input` where the parsed value `back` has an object (serde accepted a
/// sequence for a struct), naming the path.
fn objects_where_objects(input: &Value, back: &Value, path: &str) -> Result<(), Problem> {
    match (input, back) {
        (Value::Array(_), Value::Object(_)) => {
            let field = if path.is_empty() { "body" } else { path };
            Err(Problem::invalid(
                field,
                format!("{field}: expected a JSON object, got an array"),
            ))
        }
        (Value::Object(i), Value::Object(b)) => {
            for (k, iv) in i {
                if let Some(bv) = b.get(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    objects_where_objects(iv, bv, &p)?;
                }
            }
            Ok(())
        }
        (Value::Array(i), Value::Array(b)) => {
            for (n, (iv, bv)) in i.iter().zip(b).enumerate() {
                objects_where_objects(iv, bv, &format!("{path}[{n}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks the Content-Type: `application/json` (or `application/merge-patch+json` for
/// PATCH), case-insensitive, with no parameter but an optional `charset=utf-8`.
pub fn check_content_type(method: &Method, ct: Option<&str>) -> Result<(), Problem> {
    let refuse = |why: String| {
        Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            why,
        )
        .field("Content-Type"))
    };
    let Some(ct) = ct else {
        return refuse("the request has no Content-Type: send the body as application/json".into());
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let merge_patch = essence == "application/merge-patch+json" && method == Method::PATCH;
    if essence != "application/json" && !merge_patch {
        let also = if method == Method::PATCH {
            " or application/merge-patch+json"
        } else {
            ""
        };
        return refuse(format!(
            "'{}' is not accepted: send the body as application/json{also}",
            super::query::shown(ct)
        ));
    }
    for p in parts {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let v = v.trim().trim_matches('"');
        if !(k.trim().eq_ignore_ascii_case("charset") && v.eq_ignore_ascii_case("utf-8")) {
            return refuse(format!(
                "'{}' is not accepted: the only parameter taken is charset=utf-8",
                super::query::shown(ct)
            ));
        }
    }
    Ok(())
}

impl<S: Send + Sync, T: DeserializeOwned + Serialize> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A header that is not visible ASCII counts as absent... but is refused all the same.
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not visible ASCII)").to_string());
        check_content_type(req.method(), ct.as_deref())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                super::too_large()
            } else {
                Problem::bad_request(format!("cannot read the body: {e}"))
            }
        })?;
        from_slice(&bytes).map(JsonBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
    }

    #[test]
    fn arrays_for_objects_and_trailing_bytes_are_refused_by_path() {
        let field = |b: &str| from_slice::<Outer>(b.as_bytes()).unwrap_err().field;
        assert!(from_slice::<Outer>(br#"{"inner": {"a": 1}, "list": [{"a": 2}]}"#).is_ok());
        assert_eq!(field("[null, null]").as_deref(), Some("body"));
        assert_eq!(field(r#"{"inner": [1]}"#).as_deref(), Some("inner"));
        assert_eq!(
            field(r#"{"list": [{"a": 1}, [2]]}"#).as_deref(),
            Some("list[1]")
        );
        let e = from_slice::<Outer>(br#"{"inner": {"a": 1}} x"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.detail.contains("trailing"), "{}", e.detail);
        assert_eq!(from_slice::<Outer>(b"{} {}").unwrap_err().status, 400);
        assert!(from_slice::<Value>(b"[1, 2]").is_ok());
    }

    #[test]
    fn only_json_in_utf8_is_taken() {
        let ok = |m: Method, ct: &str| check_content_type(&m, Some(ct)).is_ok();
        assert!(ok(Method::PUT, "application/json"));
        assert!(ok(Method::PUT, "Application/JSON; charset=UTF-8"));
        assert!(ok(Method::PUT, "application/json;charset=\"utf-8\""));
        assert!(ok(Method::PATCH, "application/merge-patch+json"));
        assert!(!ok(Method::PUT, "application/merge-patch+json"));
        assert!(!ok(Method::PUT, "application/evil+json"));
        assert!(!ok(Method::PUT, "application/json; charset=utf-16"));
        assert!(!ok(Method::PUT, "application/json; boundary=x"));
        assert!(!ok(Method::PUT, "text/plain"));
        assert!(!ok(Method::PUT, ""));
        let e = check_content_type(&Method::PUT, None).unwrap_err();
        assert_eq!(e.status, 415);
    }
}
