//! The HTTP client the CLI uses: every command talks to the daemon's API, never to its database.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A failed call, as one line for the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("a plain HTTP client always builds"),
        }
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            ClientError(format!(
                "cannot reach tenantd at {}: {} (is 'tenantd serve' running? set --addr or TENANTD_ADDR)",
                self.base,
                root_cause(&e)
            ))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError(format!("reading the answer from {url}: {e}")))?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let detail = v["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            let field = v["field"]
                .as_str()
                .map(|f| format!(" [field: {f}]"))
                .unwrap_or_default();
            return Err(ClientError(format!("{} {detail}{field}", status.as_u16())));
        }
        if bytes.is_empty() {
            return serde_json::from_value(Value::Null).map_err(|e| ClientError(e.to_string()));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError(format!("unexpected answer from {url}: {e}")))
    }
}

impl Client {
    /// GET a text body (CSV, HTML) as is.
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            ClientError(format!(
                "cannot reach tenantd at {}: {} (is 'tenantd serve' running?)",
                self.base,
                root_cause(&e)
            ))
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError(format!("reading the answer from {url}: {e}")))?;
        if !status.is_success() {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let detail = v["detail"].as_str().unwrap_or(text.trim()).to_string();
            return Err(ClientError(format!("{} {detail}", status.as_u16())));
        }
        Ok(text)
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}
