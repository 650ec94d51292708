//! `http(s)://` image URLs (landscape §5.3), fetched only when the server runs with
//! `--allow-remote-images`.
//!
//! The server fetches whatever URL a client sends, from the server's own network position: that
//! includes loopback and private addresses unless `--allowed-remote-hosts` narrows it. Guards:
//! - only `http` and `https`, on the first URL and on every redirect (at most
//!   [`MAX_REDIRECTS`], followed here one hop at a time so each target is checked; a redirect to
//!   `file://` or any other scheme is refused);
//! - the host allow-list, when set, on every hop;
//! - one deadline for the whole fetch (connect, redirects and body), `--remote-image-timeout`;
//! - a size cap, `--max-remote-image-bytes`: a larger `Content-Length` is refused before the
//!   body is read, and a body without one is cut off at the cap;
//! - no proxy from the environment, no cookies, no credentials sent.
//!
//! Runs on the request's task (async), before the blocking image decode: a client that goes away
//! drops the fetch with it.

use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, LOCATION};
use reqwest::{Client, StatusCode, Url};

use crate::error::ApiError;
use crate::openai::convert::ImageRef;

/// Redirect hops followed before giving up (browsers allow 20; images rarely need more than one).
pub const MAX_REDIRECTS: usize = 5;

/// How remote images are fetched. Built once per server.
#[derive(Debug, Clone)]
pub struct RemoteImages {
    pub max_bytes: usize,
    pub timeout: Duration,
    /// Lower-case host names (`example.com`, or `*.example.com` for its subdomains); empty: any host.
    pub allowed_hosts: Vec<String>,
    /// `Err`: the HTTP client could not be built (reported on each remote image, not at startup).
    client: Result<Client, String>,
}

impl RemoteImages {
    pub fn new(max_bytes: usize, timeout: Duration, allowed_hosts: &[String]) -> Self {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("dsvl-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string());
        Self {
            max_bytes,
            timeout,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            client,
        }
    }

    /// Downloads one image part's URL; errors name the part (`param`) and the limit involved.
    pub async fn fetch(&self, img: &ImageRef) -> Result<Vec<u8>, ApiError> {
        let client = self.client.as_ref().map_err(|e| {
            ApiError::internal(format!(
                "the HTTP client for remote images is unusable: {e}"
            ))
        })?;
        match tokio::time::timeout(self.timeout, self.fetch_within(client, img)).await {
            Ok(result) => result,
            Err(_) => Err(super::invalid(
                img,
                format!(
                    "fetching the image took longer than the server's limit of {:.1} s \
                     (--remote-image-timeout); use a faster host or send the image inline",
                    self.timeout.as_secs_f64()
                ),
            )
            .with_code("remote_image_timeout")),
        }
    }

    async fn fetch_within(&self, client: &Client, img: &ImageRef) -> Result<Vec<u8>, ApiError> {
        let bad = |m: String| super::invalid(img, m);
        let mut url = Url::parse(img.url.trim()).map_err(|e| bad(format!("bad URL: {e}")))?;
        for hop in 0..=MAX_REDIRECTS {
            self.check(&url).map_err(|m| match hop {
                0 => bad(m),
                _ => bad(format!("redirected to {m}")),
            })?;
            let resp = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| bad(format!("cannot fetch {url}: {}", error_chain(&e))))?;
            let status = resp.status();
            if status.is_redirection() {
                let Some(next) = resp.headers().get(LOCATION) else {
                    return Err(bad(format!("{url} answered {status} without a Location")));
                };
                let next = next
                    .to_str()
                    .ok()
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| bad(format!("{url} redirects to an unreadable Location")))?;
                if hop == MAX_REDIRECTS {
                    return Err(bad(format!("more than {MAX_REDIRECTS} redirects")));
                }
                url = next;
                continue;
            }
            if status != StatusCode::OK {
                return Err(bad(format!("{url} answered HTTP {status}")));
            }
            return self.read_body(resp, img).await;
        }
        Err(bad(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// The scheme and host rules, for the first URL and every redirect target.
    fn check(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{url}: only http and https image URLs are fetched (a redirect to another scheme is refused)"
            ));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("{url}: the URL has no host"));
        }
        if !self.allowed_hosts.is_empty()
            && !self.allowed_hosts.iter().any(|a| host_matches(a, &host))
        {
            return Err(format!(
                "{url}: host `{host}` is not in the server's --allowed-remote-hosts"
            ));
        }
        Ok(())
    }

    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        img: &ImageRef,
    ) -> Result<Vec<u8>, ApiError> {
        let url = resp.url().clone();
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > self.max_bytes as u64) {
            return Err(self.too_large(img, &format!(" {n} bytes,")));
        }
        let mut data =
            Vec::with_capacity(declared.unwrap_or(0).min(self.max_bytes as u64) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            super::invalid(img, format!("reading {url} failed: {}", error_chain(&e)))
        })? {
            if data.len() + chunk.len() > self.max_bytes {
                return Err(self.too_large(img, ""));
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// `size`: " N bytes," when the image host declared it, else empty.
    fn too_large(&self, img: &ImageRef, size: &str) -> ApiError {
        ApiError::payload_too_large_param(
            format!("{}.image_url.url", img.param),
            format!(
                "{}: the remote image is{size} over the server's limit of {} bytes \
                 (--max-remote-image-bytes); raise it or send a smaller image",
                img.param, self.max_bytes
            ),
        )
        .with_code("remote_image_too_large")
    }
}

/// `allowed` is a host name, or `*.domain` for every subdomain of `domain` (not `domain` itself).
fn host_matches(allowed: &str, host: &str) -> bool {
    match allowed.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
        None => allowed == host,
    }
}

/// reqwest's error with its causes (`error sending request: connection refused`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("example.com", "example.com"));
        assert!(!host_matches("example.com", "img.example.com"));
        assert!(host_matches("*.example.com", "img.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "evilexample.com"));
    }

    #[test]
    fn schemes_and_hosts_are_checked() {
        let r = RemoteImages::new(10, Duration::from_secs(1), &["Images.Example.com".into()]);
        let ok = Url::parse("https://images.example.com/a.png").unwrap();
        assert!(r.check(&ok).is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://images.example.com/a.png",
            "https://other.example.com/a.png",
        ] {
            assert!(r.check(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
        let any = RemoteImages::new(10, Duration::from_secs(1), &[]);
        assert!(any
            .check(&Url::parse("http://10.0.0.1/a.png").unwrap())
            .is_ok());
    }
}
