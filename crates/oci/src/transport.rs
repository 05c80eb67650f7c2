//! The HTTP side of pulls: `GET` of manifests and blobs with the distribution spec's
//! authentication (anonymous, basic, or a bearer token from the `WWW-Authenticate`
//! challenge's realm, with basic credentials when we have them).
//!
//! Pushes and logins go through `oci-client`; pulls use this because every
//! `oci_client::Client` also builds a throwaway default HTTP client, which loads the
//! system CA bundle (about 120 ms with OpenSSL 3), more than a small pull takes.

use crate::registry::deepest;
use std::sync::Mutex;

/// Why a request failed.
#[derive(Debug)]
pub enum HttpError {
    /// Could not connect or the connection broke.
    Connect(String),
    /// 401/403 even after authenticating.
    Auth,
    NotFound,
    Status(u16, String),
}

#[derive(Debug)]
pub struct Transport {
    client: reqwest::Client,
    base: String,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    basic: Mutex<bool>,
}

/// `Bearer realm="…",service="…",scope="…"` → its parameters.
fn challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((key.trim().to_ascii_lowercase(), value.to_string()));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Transport {
    pub fn new(
        client: reqwest::Client,
        scheme: &str,
        registry: &str,
        credentials: Option<(String, String)>,
    ) -> Transport {
        Transport {
            client,
            base: format!("{scheme}://{registry}"),
            credentials,
            token: Mutex::new(None),
            basic: Mutex::new(false),
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(token) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return request.bearer_auth(token);
        }
        if *self.basic.lock().unwrap_or_else(|e| e.into_inner()) {
            if let Some((user, password)) = &self.credentials {
                return request.basic_auth(user, Some(password));
            }
        }
        request
    }

    /// Answers a 401 challenge; false when there is nothing more to try.
    async fn authenticate(
        &self,
        header: Option<&str>,
        repository: &str,
    ) -> Result<bool, HttpError> {
        let Some((scheme, params)) = header.and_then(challenge) else { return Ok(false) };
        match scheme.as_str() {
            "basic" => {
                let mut basic = self.basic.lock().unwrap_or_else(|e| e.into_inner());
                if *basic || self.credentials.is_none() {
                    return Ok(false);
                }
                *basic = true;
                Ok(true)
            }
            "bearer" => {
                if self.token.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return Ok(false);
                }
                let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                let Some(realm) = get("realm") else { return Ok(false) };
                let scope = get("scope").unwrap_or_else(|| format!("repository:{repository}:pull"));
                let mut query = vec![("scope", scope)];
                if let Some(service) = get("service") {
                    query.push(("service", service));
                }
                let mut request = self.client.get(&realm).query(&query);
                if let Some((user, password)) = &self.credentials {
                    request = request.basic_auth(user, Some(password));
                }
                let response = request.send().await.map_err(|e| HttpError::Connect(deepest(&e)))?;
                if matches!(response.status().as_u16(), 401 | 403) {
                    return Err(HttpError::Auth);
                }
                if !response.status().is_success() {
                    return Err(HttpError::Status(response.status().as_u16(), realm));
                }
                let body: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|e| HttpError::Status(200, format!("bad token answer: {e}")))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| HttpError::Status(200, "token answer has no token".into()))?;
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.to_string());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `GET {base}/v2/{repository}/{path}`, authenticating as the registry asks.
    pub async fn get(
        &self,
        repository: &str,
        path: &str,
        accept: &[&str],
    ) -> Result<reqwest::Response, HttpError> {
        let url = format!("{}/v2/{repository}/{path}", self.base);
        for _ in 0..3 {
            let mut request = self.client.get(&url);
            if !accept.is_empty() {
                request = request.header(reqwest::header::ACCEPT, accept.join(", "));
            }
            let response = self
                .authorize(request)
                .send()
                .await
                .map_err(|e| HttpError::Connect(deepest(&e)))?;
            let status = response.status().as_u16();
            match status {
                200..=299 => return Ok(response),
                401 => {
                    let header = response
                        .headers()
                        .get(reqwest::header::WWW_AUTHENTICATE)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string);
                    if !self.authenticate(header.as_deref(), repository).await? {
                        return Err(HttpError::Auth);
                    }
                }
                403 => return Err(HttpError::Auth),
                404 => return Err(HttpError::NotFound),
                _ => {
                    let body = response.text().await.unwrap_or_default();
                    let body: String = body.chars().take(200).collect();
                    return Err(HttpError::Status(status, body));
                }
            }
        }
        Err(HttpError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, params) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(params[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(params[2].1, "repository:a/b:pull");
        assert_eq!(challenge(r#"Basic realm="x""#).unwrap().0, "basic");
        assert!(challenge(r#"Bearer realm="unterminated"#).is_none());
    }
}
