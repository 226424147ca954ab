//! The domain layer's one error type: a request that breaks a rule, naming the field at fault.
//!
//! In a file of its own so that every domain file can use it without importing `tenant`.

/// Errors of the domain layer: a request that breaks a rule. Each names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// The value itself is wrong (HTTP 422).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The value is fine but does not fit beside the other tenants (HTTP 409).
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// A tenant named in the request does not exist (HTTP 404 or 422).
    #[error("{field}: {message}")]
    NotFound { field: String, message: String },
}

impl DomainError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn conflict(field: &str, message: impl Into<String>) -> Self {
        DomainError::Conflict {
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn field(&self) -> &str {
        match self {
            DomainError::Invalid { field, .. }
            | DomainError::Conflict { field, .. }
            | DomainError::NotFound { field, .. } => field,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            DomainError::Invalid { message, .. }
            | DomainError::Conflict { message, .. }
            | DomainError::NotFound { message, .. } => message,
        }
    }
}
