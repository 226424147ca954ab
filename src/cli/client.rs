//! The HTTP client the CLI uses: every command talks to the daemon's API, never to its database.
//! Answers are read into the types the server writes them from; a failure is the problem+json
//! `Problem` the server answered with, as one line.

use crate::api::error::Problem;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A failed call, as one line for the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

/// Tenants per request when the CLI reads the whole list (the API's most per page).
pub const TENANTS_PAGE: usize = 1000;

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

    /// GET a JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.request(Method::GET, path, None::<&()>).await?;
        self.parse(path, &body)
    }

    /// GET every page of a paged list (`GET /v1/tenants`): `limit` per request, following
    /// each answer's `Next-Cursor` until there is none.
    pub async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: usize,
    ) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page_path = {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("limit", &limit.to_string());
                if let Some(a) = &after {
                    q.append_pair("after", a);
                }
                format!("{path}?{}", q.finish())
            };
            let (body, headers) = self
                .request_full(Method::GET, &page_path, None::<&()>)
                .await?;
            let page: Vec<T> = self.parse(&page_path, &body)?;
            let next = headers
                .get("next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // A cursor that does not move would loop forever: stop on it.
            if page.is_empty() || next.is_none() || next == after {
                out.extend(page);
                return Ok(out);
            }
            out.extend(page);
            after = next;
        }
    }

    /// PUT or POST `body` as JSON and read the JSON answer.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        let answer = self.request(method, path, Some(body)).await?;
        self.parse(path, &answer)
    }

    /// DELETE; the answer has no body.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.request(Method::DELETE, path, None::<&()>)
            .await
            .map(drop)
    }

    /// GET a text body (CSV, HTML) as is.
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let body = self.request(Method::GET, path, None::<&()>).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends one request; a status other than 2xx is an error with the server's reason.
    async fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ClientError> {
        Ok(self.request_full(method, path, body).await?.0)
    }

    /// `request`, with the answer's headers.
    async fn request_full<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap), ClientError> {
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
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError(format!("reading the answer from {url}: {e}")))?;
        if !status.is_success() {
            return Err(failure(status, &bytes));
        }
        Ok((bytes.to_vec(), headers))
    }

    fn parse<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body)
            .map_err(|e| ClientError(format!("unexpected answer from {}{path}: {e}", self.base)))
    }
}

/// The one line a failed call shows: the status, the problem's detail and the field at fault;
/// the body as text when it is not a problem+json document (a proxy's page, say).
fn failure(status: StatusCode, body: &[u8]) -> ClientError {
    let reason = match serde_json::from_slice::<Problem>(body) {
        Ok(p) => match p.field {
            Some(f) => format!("{} [field: {f}]", p.detail),
            None => p.detail,
        },
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    ClientError(format!("{} {reason}", status.as_u16()))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_one_line_with_the_problems_detail_and_field() {
        let p = Problem::invalid("pid", "no process 4000000");
        let body = serde_json::to_vec(&p).unwrap();
        assert_eq!(
            failure(StatusCode::UNPROCESSABLE_ENTITY, &body).0,
            "422 no process 4000000 [field: pid]"
        );
        let p = Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "tenant 'x' does not exist",
        );
        let body = serde_json::to_vec(&p).unwrap();
        assert_eq!(
            failure(StatusCode::NOT_FOUND, &body).0,
            "404 tenant 'x' does not exist"
        );
        assert_eq!(
            failure(StatusCode::BAD_GATEWAY, b"  upstream down\n").0,
            "502 upstream down"
        );
    }
}
