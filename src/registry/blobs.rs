//! Blob GETs on an HTTP client of our own.
//!
//! Blobs are the hot path, and where a registry's bad moments meet a
//! booting node. oci-client keeps from its caller what is needed to ride
//! those out: the `Retry-After` of a 429 or 503, a 401 on a token the
//! registry revoked before its stated expiry (a fresh token fixes it), and
//! the `Content-Range` a partial answer really starts at. So blobs are
//! fetched here, with the token oci-client's flow obtained; manifests and
//! the token flow itself stay with oci-client.
//!
//! Redirects (to blob storage) are followed, at most [`MAX_REDIRECTS`];
//! the HTTP client drops the `Authorization` header when a redirect leaves
//! the registry's origin, as storage behind presigned URLs requires.

use super::colon;
use crate::digest::Digest;
use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_RANGE, RANGE, RETRY_AFTER};
use std::time::{Duration, SystemTime};

const MAX_REDIRECTS: usize = 5;

/// An error body longer than this is cut: registries sometimes answer with
/// a whole HTML page, and a hostile one could send without end.
const MAX_ERROR_BODY: usize = 16 << 10;

/// What a blob request carries to prove who is asking.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Credential {
    Anonymous,
    /// `user:password`, sent as HTTP Basic (registries without a token
    /// service).
    Basic(String, String),
    /// A bearer token from the registry's token service.
    Bearer(String),
}

impl Credential {
    fn header(&self) -> Option<HeaderValue> {
        let value = match self {
            Credential::Anonymous => return None,
            Credential::Basic(user, password) => {
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {pair}")
            }
            Credential::Bearer(token) => format!("Bearer {token}"),
        };
        let mut v = HeaderValue::from_str(&value).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// The credential in use and how many times it was renewed, so that many
/// requests refused together renew it once.
struct Current {
    generation: u64,
    credential: Credential,
}

pub(super) struct Blobs {
    http: reqwest::Client,
    /// `{scheme}://{host}/v2/{repository}/blobs/`
    base: String,
    current: tokio::sync::Mutex<Current>,
}

/// One answer to a blob GET, as far as the request layer cares.
pub(super) enum Answer {
    /// 200 (`skip` = bytes before the asked offset) or 206.
    Body {
        stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
        /// Bytes to discard: the registry ignored `Range` and started at 0.
        skip: u64,
        /// Blob offset the response reaches, when its length is known.
        end: Option<u64>,
    },
    /// 401: the credential sent (of this generation) was refused.
    Refused { generation: u64, message: String },
    /// Any other status.
    Failed {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
}

/// Why a blob GET got no HTTP answer, or an answer that cannot be used.
pub(super) enum Trouble {
    Transport(reqwest::Error),
    /// A partial answer for other bytes than the ones asked for.
    WrongRange(String),
}

impl Blobs {
    pub(super) fn new(
        scheme: &str,
        host: &str,
        repository: &str,
        user_agent: &str,
        connect_timeout: Duration,
        credential: Credential,
    ) -> Result<Blobs, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .tcp_nodelay(true)
            .build()?;
        Ok(Blobs {
            http,
            base: format!("{scheme}://{host}/v2/{repository}/blobs/"),
            current: tokio::sync::Mutex::new(Current {
                generation: 0,
                credential,
            }),
        })
    }

    /// GET `len` bytes of `digest` from `offset` (to the end: `None`).
    pub(super) async fn get(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Answer, Trouble> {
        let (generation, auth) = {
            let c = self.current.lock().await;
            (c.generation, c.credential.header())
        };
        let mut req = self.http.get(format!("{}{digest}", self.base));
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        let range = match len {
            Some(n) => format!("bytes={offset}-{}", offset + n.max(1) - 1),
            None => format!("bytes={offset}-"),
        };
        let resp = req
            .header(RANGE, range)
            .send()
            .await
            .map_err(Trouble::Transport)?;
        let status = resp.status().as_u16();
        let length = resp.content_length();
        match status {
            206 => {
                let start = content_range_start(resp.headers());
                if start != Some(offset) {
                    return Err(Trouble::WrongRange(format!(
                        "asked for bytes from {offset}, the partial answer starts at {}",
                        start.map_or_else(|| "an unstated offset".to_string(), |s| s.to_string())
                    )));
                }
                Ok(Answer::Body {
                    stream: body(resp),
                    skip: 0,
                    end: length.map(|n| offset + n),
                })
            }
            200 => Ok(Answer::Body {
                stream: body(resp),
                skip: offset,
                end: length,
            }),
            401 => Ok(Answer::Refused {
                generation,
                message: error_message(resp).await,
            }),
            _ => {
                let retry_after = retry_after(resp.headers(), SystemTime::now());
                Ok(Answer::Failed {
                    status,
                    message: error_message(resp).await,
                    retry_after,
                })
            }
        }
    }

    /// The credential to start with (the token flow's first answer).
    pub(super) fn set(&mut self, credential: Credential) {
        self.current.get_mut().credential = credential;
    }

    /// How many times the credential was renewed.
    pub(super) async fn generation(&self) -> u64 {
        self.current.lock().await.generation
    }

    /// Replace the credential refused at `generation` with what `renew`
    /// gets, unless another request already did.
    pub(super) async fn renew<E, F>(&self, generation: u64, renew: F) -> Result<(), E>
    where
        F: std::future::Future<Output = Result<Credential, E>>,
    {
        let mut c = self.current.lock().await;
        if c.generation == generation {
            c.credential = renew.await?;
            c.generation += 1;
        }
        Ok(())
    }
}

fn body(resp: reqwest::Response) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    resp.bytes_stream()
        .map(|r| r.map_err(std::io::Error::other))
        .boxed()
}

/// `bytes START-END/TOTAL` -> START.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes")?.trim_start();
    spec.split('-').next()?.trim().parse().ok()
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 10.2.3).
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The registry's words for a failure: the OCI error envelope's codes and
/// messages when it sent one, else the start of the body.
async fn error_message(mut resp: reqwest::Response) -> String {
    let mut raw = Vec::new();
    while raw.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => raw.extend_from_slice(&c),
            _ => break,
        }
    }
    raw.truncate(MAX_ERROR_BODY);
    envelope_message(&raw).unwrap_or_else(|| {
        String::from_utf8_lossy(&raw)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn envelope_message(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let e: Envelope = serde_json::from_slice(raw).ok()?;
    let parts: Vec<String> = e
        .errors
        .iter()
        .map(|e| format!("{}{}", e.code, colon(&e.message)))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: reqwest::header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(RETRY_AFTER, "7"), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(RETRY_AFTER, &later), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(RETRY_AFTER, &past), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(RETRY_AFTER, "soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn content_range_starts() {
        let h = |v: &str| headers(CONTENT_RANGE, v);
        assert_eq!(content_range_start(&h("bytes 100-199/1000")), Some(100));
        assert_eq!(content_range_start(&h("bytes 0-0/*")), Some(0));
        assert_eq!(content_range_start(&h("items 1-2/3")), None);
        assert_eq!(content_range_start(&HeaderMap::new()), None);
    }

    #[test]
    fn error_envelopes_name_code_and_message() {
        let raw = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"},{"code":"X"}]}"#;
        assert_eq!(
            envelope_message(raw).as_deref(),
            Some("TOOMANYREQUESTS: slow down; X")
        );
        assert_eq!(envelope_message(b"<html>busy</html>"), None);
    }

    #[test]
    fn credentials_become_headers() {
        assert!(Credential::Anonymous.header().is_none());
        let b = Credential::Basic("u".into(), "p".into()).header().unwrap();
        assert_eq!(b.to_str().unwrap(), "Basic dTpw");
        assert!(b.is_sensitive());
        let t = Credential::Bearer("tok".into()).header().unwrap();
        assert_eq!(t.to_str().unwrap(), "Bearer tok");
    }
}
