//! JSON Schemas (for the OpenAPI document) of the wire forms whose rules live in parsing and
//! validation code rather than in a type: tenant names, units with their text forms, kernel
//! limits and labels. Each schema states the same bounds as the parser beside it.

use super::tenant::{MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES, MAX_LABELS, TenantName};
use super::units::Bytes;
use super::{Limit, units::Percent};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::{PartialSchema, ToSchema};

/// A number schema of `t` from `min` to `max`.
fn ranged(t: Type, min: usize, max: Option<u64>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(t)
        .minimum(Some(min))
        .maximum(max.map(|m| m as usize))
}

/// A string schema with a pattern and one example.
fn text(pattern: &str, example: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .examples([example])
        .into()
}

/// "4GiB": what `units::parse_bytes` takes that the document promises (1-6 digits and a unit).
const BYTES_TEXT: &str = "^[1-9][0-9]{0,5}(B|KiB|MiB|GiB|TiB)$";

impl PartialSchema for TenantName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[a-z0-9][a-z0-9-]{0,62}$"))
            .description(Some(
                "1-63 characters from a-z, 0-9 and '-', starting with a letter or digit",
            ))
            .into()
    }
}
impl ToSchema for TenantName {}

impl PartialSchema for Bytes {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ranged(Type::Integer, 1, Some(u64::MAX)))
            .item(text(BYTES_TEXT, "4GiB"))
            .description(Some(
                "bytes, at least 1; also accepts \"4GiB\" (KiB, MiB, GiB, TiB are powers of 1024)",
            ))
            .into()
    }
}
impl ToSchema for Bytes {}

/// A byte count that may be 0 (`memory.swap_limit_bytes`), as `Bytes` on the wire.
pub struct BytesOrZero;
impl PartialSchema for BytesOrZero {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ranged(Type::Integer, 0, Some(u64::MAX)))
            .item(text(BYTES_TEXT, "4GiB"))
            .description(Some("bytes, 0 or more; also accepts \"4GiB\""))
            .into()
    }
}
impl ToSchema for BytesOrZero {}

/// A guarantee: a `Percent` of the parent, above 0 and at most 100.
pub struct GuaranteePct;
impl PartialSchema for GuaranteePct {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .exclusive_minimum(Some(0))
                    .maximum(Some(100)),
            )
            .item(text("^([1-9][0-9]?(\\.[0-9]{1,2})?|100)%$", "50%"))
            .description(Some(
                "share of the parent, above 0 and at most 100 percent; also accepts \"50%\"",
            ))
            .into()
    }
}
impl ToSchema for GuaranteePct {}

/// A CPU limit: a `Percent` of one CPU, 1 to 102400.
pub struct LimitPct;
impl PartialSchema for LimitPct {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ranged(Type::Number, 1, Some(102_400)))
            .item(text("^[1-9][0-9]{0,4}%$", "150%"))
            .description(Some(
                "percent of one CPU (200 = two CPUs), 1 to 102400; also accepts \"150%\"",
            ))
            .into()
    }
}
impl ToSchema for LimitPct {}

/// `Percent` alone is never on the wire without one of the two meanings above.
impl PartialSchema for Percent {
    fn schema() -> RefOr<Schema> {
        GuaranteePct::schema()
    }
}

impl PartialSchema for Limit {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["max"])),
            )
            .item(ranged(Type::Integer, 0, None))
            .description(Some("a kernel limit: a number, or \"max\" for none"))
            .into()
    }
}
impl ToSchema for Limit {}

/// A label value as `tenant::check_labels` takes it.
fn label_value() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_LABEL_VALUE_BYTES))
        .pattern(Some("^[^\\u0000-\\u001f\\u007f-\\u009f]*$"))
}

/// Labels as `tenant::check_labels` takes them; `patch` lets a value be null (removes it).
pub fn labels(patch: bool) -> Schema {
    let value: Schema = if patch {
        OneOfBuilder::new()
            .item(label_value())
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .into()
    } else {
        label_value().into()
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_LABELS))
        .property_names(Some(
            ObjectBuilder::new().schema_type(SchemaType::AnyValue).pattern(Some(format!(
                "^[A-Za-z0-9][A-Za-z0-9._/-]{{0,{}}}$",
                MAX_LABEL_KEY_BYTES - 1
            ))),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(value))))
        .description(Some(format!(
            "at most {MAX_LABELS} labels; keys of 1-{MAX_LABEL_KEY_BYTES} characters from A-Z a-z 0-9 . _ / - starting with a letter or digit; values of at most {MAX_LABEL_VALUE_BYTES} bytes of UTF-8 without control characters"
        )))
        .into()
}

/// `TenantSpec.labels`, for `#[schema(schema_with)]`.
pub fn spec_labels() -> Schema {
    labels(false)
}

/// `TenantSpec.nodes`: a label selector over node labels, or null for every node.
pub fn node_selector() -> Schema {
    OneOfBuilder::new()
        .item(labels(false))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "the fleet nodes that enforce the tenant: every label must match a node's node_labels; null or absent for every node",
        ))
        .into()
}

/// The cgroup version a host runs tenants on, as `/v1/host` names it.
pub struct CgroupVersionName;
impl PartialSchema for CgroupVersionName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["v1", "v2"]))
            .into()
    }
}
impl ToSchema for CgroupVersionName {}
