//! The OpenAPI document, generated: the paths from the handlers' `#[utoipa::path]` annotations,
//! collected with the routes themselves (`api::routes`), and the schemas from the request and
//! response types' `ToSchema` derives. `document()` is served at `/v1/openapi.json`;
//! `openapi.json` beside this file is its committed copy, which a test keeps equal
//! (`UPDATE_OPENAPI=1 cargo nextest run --lib openapi` rewrites it).

use super::error::Problem;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, schema::Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

/// What the document says beyond the paths: title, authentication, the shared schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tenantd admin API",
        description = "Tenants as cgroup v2 subtrees. Errors are RFC 9457 application/problem+json with the field at fault. Auth: Authorization: Bearer TOKEN (admin writes, viewer reads); a token scoped to a tenant (token file line NAME ROLE TOKEN tenant=TENANT) sees only that tenant's subtree, other tenants answer as missing (404), and /v1/host and /v1/reconcile do not exist for it; without a token file the daemon listens on loopback only."
    ),
    components(schemas(Problem, TenantPatch), responses(Problem)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub(super) struct Doc;

/// The `bearer` security scheme the document's `security` names.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = api.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// Every error answer: problem details.
impl<'s> ToResponse<'s> for Problem {
    fn response() -> (&'s str, RefOr<utoipa::openapi::Response>) {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build();
        (
            "Problem",
            ResponseBuilder::new()
                .description("problem details")
                .content("application/problem+json", content)
                .into(),
        )
    }
}

/// The body of `PATCH /v1/tenants/{name}`: a JSON merge patch of a `TenantSpec`. Its schema is
/// derived from `TenantSpec`'s by `merge_patch` when the document is built.
pub struct TenantPatch;

impl PartialSchema for TenantPatch {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::ObjectBuilder::new().into()
    }
}
impl ToSchema for TenantPatch {}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, api) = super::routes().split_for_parts();
        let mut doc = serde_json::to_value(api).unwrap_or_default();
        if let Some(schemas) = doc
            .pointer_mut("/components/schemas")
            .and_then(Value::as_object_mut)
        {
            finish(schemas);
        }
        doc
    })
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(document()).unwrap_or_default();
        s.push('\n');
        s
    })
}

/// What serde does that the derives do not say: a flattened struct's fields stand in the same
/// object (utoipa writes `allOf`), and a struct serializes exactly its fields (closed objects).
/// Then the merge patch schema, from the finished `TenantSpec`.
fn finish(schemas: &mut Map<String, Value>) {
    let names: Vec<String> = schemas.keys().cloned().collect();
    for n in &names {
        if let Some(parts) = schemas[n].get("allOf").and_then(Value::as_array).cloned() {
            let merged = flatten(schemas, &parts, schemas[n].get("description"));
            schemas.insert(n.clone(), merged);
        }
    }
    for s in schemas.values_mut() {
        close(s);
    }
    let patch = merge_patch(schemas, &json!({"$ref": "#/components/schemas/TenantSpec"}));
    let mut patch = patch.as_object().cloned().unwrap_or_default();
    patch.insert(
        "description".into(),
        "JSON merge patch (RFC 7396) of a TenantSpec: objects merge, null removes a field, anything else replaces it (io.limits as a whole)".into(),
    );
    schemas.insert("TenantPatch".into(), Value::Object(patch));
}

/// Marks every struct object in `s` closed: serde writes exactly its fields. (Request types
/// say so themselves with `deny_unknown_fields`; a flattened map sets its own.)
fn close(s: &mut Value) {
    match s {
        Value::Object(o) => {
            if o.contains_key("properties") && !o.contains_key("additionalProperties") {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            o.values_mut().for_each(close);
        }
        Value::Array(a) => a.iter_mut().for_each(close),
        _ => {}
    }
}

/// The component a `$ref` names, or the schema itself.
fn resolve<'a>(schemas: &'a Map<String, Value>, s: &'a Value) -> &'a Value {
    s.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .and_then(|n| schemas.get(n))
        .unwrap_or(s)
}

/// One object of the properties of every part of an `allOf` (a flattened struct). A part that
/// is a `oneOf` (a flattened tagged enum) makes the whole a `oneOf`: the other parts' properties
/// with each variant's.
fn flatten(schemas: &Map<String, Value>, parts: &[Value], description: Option<&Value>) -> Value {
    let one_of = parts.iter().enumerate().find_map(|(i, p)| {
        let variants = resolve(schemas, p).get("oneOf")?.as_array()?;
        Some((i, variants))
    });
    if let Some((i, variants)) = one_of {
        let each = variants.iter().map(|v| {
            let mut ps = parts.to_vec();
            ps[i] = v.clone();
            flatten(schemas, &ps, v.get("description"))
        });
        let mut o = Map::new();
        if let Some(d) = description {
            o.insert("description".into(), d.clone());
        }
        o.insert("oneOf".into(), Value::Array(each.collect()));
        return Value::Object(o);
    }
    let (mut props, mut required) = (Map::new(), Vec::<Value>::new());
    for p in parts {
        let p = resolve(schemas, p);
        if let Some(ps) = p.get("properties").and_then(Value::as_object) {
            props.extend(ps.clone());
        }
        if let Some(rs) = p.get("required").and_then(Value::as_array) {
            required.extend(rs.iter().cloned());
        }
    }
    let mut o = Map::new();
    o.insert("type".into(), "object".into());
    if let Some(d) = description {
        o.insert("description".into(), d.clone());
    }
    o.insert("required".into(), Value::Array(required));
    o.insert("properties".into(), Value::Object(props));
    Value::Object(o)
}

/// `s` or null. A schema that admits null already (`type: "null"`, a `type` list naming
/// "null", or a `oneOf` branch of null) is kept as it is: wrapped, null would match two
/// branches of the `oneOf`, which admits a value matching exactly one, so the document would
/// refuse the null it means to allow (schemathesis found `{"launch": {"private_network":
/// null}}` so refused by the PATCH schema and accepted by the API).
fn nullable(s: Value) -> Value {
    let is_null = |x: &Value| match x.get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "null"),
        _ => false,
    };
    let has_null = s
        .get("oneOf")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(is_null));
    if has_null || is_null(&s) {
        s
    } else {
        json!({"oneOf": [s, {"type": "null"}]})
    }
}

/// The schema of an RFC 7396 merge patch of `s`: an object's fields each optional and
/// nullable (null removes), recursively; a map's values nullable; anything else replaced
/// whole, so as it is.
fn merge_patch(schemas: &Map<String, Value>, s: &Value) -> Value {
    // An optional section (`oneOf: [null, X]`) patches as X would.
    let inner = s
        .get("oneOf")
        .and_then(Value::as_array)
        .and_then(|v| {
            let rest: Vec<&Value> = v
                .iter()
                .filter(|x| x.get("type") != Some(&json!("null")))
                .collect();
            (rest.len() == 1).then(|| rest[0])
        })
        .unwrap_or(s);
    let obj = resolve(schemas, inner);
    let Some(o) = obj.as_object() else {
        return s.clone();
    };
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        let mut out = o.clone();
        out.remove("required");
        out.insert(
            "properties".into(),
            Value::Object(
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), nullable(merge_patch(schemas, v))))
                    .collect(),
            ),
        );
        return Value::Object(out);
    }
    if let Some(values) = o.get("additionalProperties").filter(|v| v.is_object()) {
        let mut out = o.clone();
        out.insert("additionalProperties".into(), nullable(values.clone()));
        return Value::Object(out);
    }
    s.clone()
}

#[cfg(test)]
mod tests {
    /// The committed `src/api/openapi.json` is the generated document; with
    /// `UPDATE_OPENAPI=1` the test rewrites it instead.
    #[test]
    fn the_committed_openapi_json_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json");
        let generated = super::text();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "src/api/openapi.json differs from the document the code generates: regenerate it with `UPDATE_OPENAPI=1 cargo nextest run --lib openapi` and commit it"
        );
    }

    /// A validator of the document's schema `name`, its references resolved in the document.
    fn validator(name: &str) -> jsonschema::Validator {
        let doc = super::document();
        let mut schema = doc["components"]["schemas"][name].clone();
        schema["components"] = doc["components"].clone();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap()
    }

    /// A merge patch's null removes a field at any depth (RFC 7396): the PATCH schema admits it
    /// where the API does, and still refuses a value of the wrong type.
    #[test]
    fn a_merge_patch_that_removes_a_nested_field_validates_against_the_patch_schema() {
        let v = validator("TenantPatch");
        for ok in [
            serde_json::json!({"launch": {"private_network": null}}),
            serde_json::json!({"launch": {"no_new_privs": null, "private_tmp": true}}),
            serde_json::json!({"launch": null}),
            serde_json::json!({"cpu": {"limit_pct": null}}),
        ] {
            let errors: Vec<String> = v.iter_errors(&ok).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{ok}: {errors:?}");
        }
        assert!(!v.is_valid(&serde_json::json!({"launch": {"private_network": "yes"}})));
    }

    /// Every kind this version records, as `GET /v1/events` answers it, validates against the
    /// document's `Event` schema; a detail of the wrong shape or an unknown kind does not.
    #[test]
    fn every_event_kind_validates_against_the_event_schema() {
        use crate::domain::event::tests::one_of_each;
        use crate::store::Event;
        let v = validator("Event");
        let row = |kind: String, detail: serde_json::Value| {
            serde_json::to_value(Event {
                id: 7,
                ts_ms: 1_000,
                tenant: Some("a".into()),
                kind,
                actor: None,
                detail,
            })
            .unwrap()
        };
        let kinds = one_of_each();
        for e in &kinds {
            let (kind, detail) = e.columns();
            let r = row(kind.clone(), detail);
            let errors: Vec<String> = v.iter_errors(&r).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{kind}: {errors:?}\n{r}");
        }
        let (kind, _) = kinds[0].columns();
        assert!(!v.is_valid(&row(kind, serde_json::json!({"surprise": 1}))));
        assert!(!v.is_valid(&row("no_such_kind".into(), serde_json::json!({}))));
    }
}
