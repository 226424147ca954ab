//! Bearer-token auth. Tokens come from a file, one per line: `NAME ROLE TOKEN`, where ROLE
//! is `admin` (read and write) or `viewer` (read). Without a token file the daemon listens on
//! loopback only and treats every caller as the local admin. Tokens are never logged.

use super::error::Problem;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Admin,
}

/// Who is calling: the token's name, for the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Clone)]
pub struct Tokens {
    entries: Option<Vec<(String, Role, String)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens({} entries)",
            self.entries.as_ref().map_or(0, |e| e.len())
        )
    }
}

impl Tokens {
    /// No token file: every caller is the local admin (loopback only).
    pub fn open() -> Self {
        Tokens { entries: None }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_ascii_whitespace().collect();
            let [name, role, token] = parts[..] else {
                return Err(format!("line {}: expected 'NAME ROLE TOKEN'", i + 1));
            };
            let role = match role {
                "admin" => Role::Admin,
                "viewer" => Role::Viewer,
                other => {
                    return Err(format!(
                        "line {}: role '{other}' is not 'admin' or 'viewer'",
                        i + 1
                    ));
                }
            };
            if token.len() < 16 {
                return Err(format!(
                    "line {}: the token of '{name}' is shorter than 16 characters",
                    i + 1
                ));
            }
            entries.push((name.to_string(), role, token.to_string()));
        }
        if entries.is_empty() {
            return Err("no tokens: add lines 'NAME admin|viewer TOKEN'".into());
        }
        Ok(Tokens {
            entries: Some(entries),
        })
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    pub fn is_open(&self) -> bool {
        self.entries.is_none()
    }

    fn find(&self, presented: &str) -> Option<Caller> {
        let entries = self.entries.as_ref()?;
        // Compare every entry in full so timing does not reveal a prefix.
        let mut found = None;
        for (name, role, token) in entries {
            let same = token.len() == presented.len()
                && token
                    .bytes()
                    .zip(presented.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
    }
}

/// Paths anyone may read (probes, the API description).
fn public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/v1/openapi.json")
}

pub async fn authenticate(
    State(tokens): State<Arc<Tokens>>,
    mut req: Request,
    next: Next,
) -> Response {
    if public(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = if tokens.is_open() {
        Caller {
            name: "local".into(),
            role: Role::Admin,
        }
    } else {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented.and_then(|t| tokens.find(t.trim())) {
            Some(c) => c,
            None => {
                let mut r = Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or unknown bearer token: send 'Authorization: Bearer TOKEN' with a token from the daemon's token file",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
                return r;
            }
        }
    };
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if writes && caller.role != Role::Admin {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token '{}' has the viewer role, which can only read: use an admin token",
                caller.name
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let t = Tokens::parse(
            "# ops\nalice admin 0123456789abcdef0123\nbob viewer fedcba9876543210fedc\n",
        )
        .unwrap();
        assert_eq!(t.find("0123456789abcdef0123").unwrap().role, Role::Admin);
        assert_eq!(t.find("fedcba9876543210fedc").unwrap().name, "bob");
        assert!(t.find("0123456789abcdef012").is_none());
        assert!(
            Tokens::parse("alice root 0123456789abcdef0123")
                .unwrap_err()
                .contains("role 'root'")
        );
        assert!(
            Tokens::parse("alice admin short")
                .unwrap_err()
                .contains("shorter than 16")
        );
        assert!(Tokens::parse("").is_err());
        assert!(
            !format!("{t:?}").contains("0123"),
            "tokens never appear in debug output"
        );
    }
}
