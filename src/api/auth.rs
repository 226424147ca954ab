//! Bearer-token auth. Tokens come from a file, one per line: `NAME ROLE TOKEN [tenant=TENANT]`,
//! where ROLE is `admin` (read and write) or `viewer` (read), and `tenant=` scopes the token to
//! that tenant's subtree (see `scope`). The file must not be readable or writable by group or
//! others. Without a token file the daemon listens on loopback only and treats every caller as
//! the local admin. Tokens are never logged. A reload (SIGHUP) replaces the whole set at once
//! (`Tokens::replace`): a request sees the old set or the new one, never a mix.

use super::error::Problem;
use crate::domain::TenantName;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::Path;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Admin,
}

/// Who is calling: the token's name, for the event log, its role, and the tenant whose
/// subtree it is confined to (`None`: the whole host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub scope: Option<TenantName>,
}

/// One line of the token file.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    role: Role,
    token: String,
    scope: Option<TenantName>,
}

/// The tokens in force: `None` without a token file. Replaced whole by `Tokens::replace`.
pub struct Tokens {
    entries: RwLock<Option<Arc<[Entry]>>>,
}

/// What a reload changed, by token name (never the tokens themselves).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Names whose token, role or scope changed.
    pub changed: Vec<String>,
    /// Tokens in force after the reload.
    pub count: usize,
}

impl TokenChanges {
    /// True when the reload left every token as it was.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for TokenChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tokens", self.count)?;
        if self.is_empty() {
            return write!(f, ", unchanged");
        }
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                write!(f, "; {what}: {}", names.join(", "))?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens({} entries)",
            self.entries().as_ref().map_or(0, |e| e.len())
        )
    }
}

impl Tokens {
    /// No token file: every caller is the local admin (loopback only).
    pub fn open() -> Self {
        Tokens {
            entries: RwLock::new(None),
        }
    }

    /// The set in force (a poisoned lock still holds a whole set: writers only swap it).
    fn entries(&self) -> Option<Arc<[Entry]>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `new`'s tokens in force in place of these, and says what changed.
    pub fn replace(&self, new: Tokens) -> TokenChanges {
        let new = new.entries();
        let changes = changes(self.entries().as_deref(), new.as_deref());
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = new;
        changes
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_ascii_whitespace().collect();
            let (name, role, token, scope) = match parts[..] {
                [name, role, token] => (name, role, token, None),
                [name, role, token, scope] => (name, role, token, Some(scope)),
                _ => {
                    return Err(format!(
                        "line {}: expected 'NAME ROLE TOKEN' or 'NAME ROLE TOKEN tenant=TENANT'",
                        i + 1
                    ));
                }
            };
            let scope = scope
                .map(|s| {
                    let t = s.strip_prefix("tenant=").ok_or_else(|| {
                        format!(
                            "line {}: the 4th field of '{name}' must be 'tenant=TENANT'",
                            i + 1
                        )
                    })?;
                    TenantName::parse(t)
                        .map_err(|e| format!("line {}: tenant of '{name}': {}", i + 1, e.message()))
                })
                .transpose()?;
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
            entries.push(Entry {
                name: name.to_string(),
                role,
                token: token.to_string(),
                scope,
            });
        }
        if entries.is_empty() {
            return Err("no tokens: add lines 'NAME admin|viewer TOKEN [tenant=TENANT]'".into());
        }
        Ok(Tokens {
            entries: RwLock::new(Some(entries.into())),
        })
    }

    /// Reads the token file, refusing one that group or others may read or write: the
    /// tokens are passwords.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            let p = path.display();
            let who = if mode & 0o044 != 0 {
                "readable"
            } else {
                "writable"
            };
            return Err(format!(
                "token file {p} is {who} by others (mode {:04o}): run chmod 600 {p}",
                mode & 0o7777
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    pub fn is_open(&self) -> bool {
        self.entries().is_none()
    }

    fn find(&self, presented: &str) -> Option<Caller> {
        let entries = self.entries()?;
        // Compare every entry in full so timing does not reveal a prefix.
        let mut found = None;
        for e in entries.iter() {
            let same = e.token.len() == presented.len()
                && e.token
                    .bytes()
                    .zip(presented.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                found = Some(Caller {
                    name: e.name.clone(),
                    role: e.role,
                    scope: e.scope.clone(),
                });
            }
        }
        found
    }
}

/// Names added, removed and changed from `old` to `new`, each in file order.
fn changes(old: Option<&[Entry]>, new: Option<&[Entry]>) -> TokenChanges {
    let (old, new) = (old.unwrap_or_default(), new.unwrap_or_default());
    let named = |list: &[Entry], name: &str| list.iter().find(|e| e.name == name).cloned();
    let names = |list: &[Entry], keep: &dyn Fn(&Entry) -> bool| -> Vec<String> {
        list.iter()
            .filter(|e| keep(e))
            .map(|e| e.name.clone())
            .collect()
    };
    TokenChanges {
        added: names(new, &|e| named(old, &e.name).is_none()),
        removed: names(old, &|e| named(new, &e.name).is_none()),
        changed: names(new, &|e| named(old, &e.name).is_some_and(|o| o != *e)),
        count: new.len(),
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
            scope: None,
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
        assert_eq!(t.find("0123456789abcdef0123").unwrap().scope, None);
    }

    #[test]
    fn replace_puts_the_new_set_in_force_and_names_what_changed() {
        let t = Tokens::parse(
            "alice admin 0123456789abcdef0123\nbob viewer fedcba9876543210fedc\ncarol viewer cccccccccccccccccccc\n",
        )
        .unwrap();
        let changes = t.replace(
            Tokens::parse(
                "bob admin fedcba9876543210fedc\ncarol viewer cccccccccccccccccccc\ndave viewer dddddddddddddddddddd\n",
            )
            .unwrap(),
        );
        assert_eq!(
            changes.to_string(),
            "3 tokens; added: dave; removed: alice; changed: bob"
        );
        assert!(t.find("0123456789abcdef0123").is_none());
        assert_eq!(t.find("fedcba9876543210fedc").unwrap().role, Role::Admin);
        assert_eq!(t.find("dddddddddddddddddddd").unwrap().name, "dave");
        let same = Tokens::parse("bob admin fedcba9876543210fedc\ncarol viewer cccccccccccccccccccc\ndave viewer dddddddddddddddddddd\n").unwrap();
        assert_eq!(t.replace(same).to_string(), "3 tokens, unchanged");
    }

    #[test]
    fn scoped_tokens() {
        let t = Tokens::parse(
            "acme-ops admin 0123456789abcdef0123 tenant=acme\nacme-ro viewer fedcba9876543210fedc tenant=acme\n",
        )
        .unwrap();
        let c = t.find("0123456789abcdef0123").unwrap();
        assert_eq!(
            (c.role, c.scope.as_ref().map(TenantName::as_str)),
            (Role::Admin, Some("acme"))
        );
        let c = t.find("fedcba9876543210fedc").unwrap();
        assert_eq!(
            (c.role, c.scope.as_ref().map(TenantName::as_str)),
            (Role::Viewer, Some("acme"))
        );
        for (line, says) in [
            (
                "a admin 0123456789abcdef0123 acme",
                "must be 'tenant=TENANT'",
            ),
            (
                "a admin 0123456789abcdef0123 tenant=",
                "line 1: tenant of 'a':",
            ),
            (
                "a admin 0123456789abcdef0123 tenant=../x",
                "line 1: tenant of 'a':",
            ),
            (
                "a admin 0123456789abcdef0123 tenant=x y",
                "expected 'NAME ROLE TOKEN'",
            ),
        ] {
            let e = Tokens::parse(line).unwrap_err();
            assert!(e.contains(says), "{line:?}: {e}");
        }
    }

    #[test]
    fn finding_11_a_token_file_others_can_read_or_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "alice admin 0123456789abcdef0123\n").unwrap();
        let p = f.display();
        for (mode, says) in [
            (
                0o644,
                format!("token file {p} is readable by others (mode 0644): run chmod 600 {p}"),
            ),
            (
                0o640,
                format!("token file {p} is readable by others (mode 0640): run chmod 600 {p}"),
            ),
            (
                0o604,
                format!("token file {p} is readable by others (mode 0604): run chmod 600 {p}"),
            ),
            (
                0o620,
                format!("token file {p} is writable by others (mode 0620): run chmod 600 {p}"),
            ),
            (
                0o601,
                format!("token file {p} is writable by others (mode 0601): run chmod 600 {p}"),
            ),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(Tokens::load(&f).unwrap_err(), says);
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let t = Tokens::load(&f).unwrap();
            assert_eq!(t.find("0123456789abcdef0123").unwrap().name, "alice");
        }
    }
}
