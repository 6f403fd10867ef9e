//! A registry reached over HTTP(S): manifests and the token flow through
//! oci-client, blobs through [`Blobs`](super::blobs).
//!
//! On top of the protocol this adds what lazy mounting needs: a deadline on
//! every request and every read, retries with backoff (or the registry's
//! `Retry-After`), a token renewed once when the registry refuses it, bodies
//! cut to exactly the requested range, streams that resume after a dropped
//! connection, and counting of everything received.

use super::blobs::{Answer, Blobs, Credential, Trouble};
use super::retry::Backoff;
use super::{auth, colon, manifest, Counters, RegistryError, RegistryOptions};
use crate::digest::Digest;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::future::Future;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

const USER_AGENT: &str = concat!("lazyboot/", env!("CARGO_PKG_VERSION"));

/// Registries sometimes answer 5xx with a whole HTML page; keep errors readable.
const MAX_MESSAGE_LEN: usize = 300;

/// One place the repository can be fetched from. Only the upstream registry
/// exists today; mirrors would become further endpoints (oci-client already
/// supports them through `Reference::set_mirror_registry`).
struct Endpoint {
    registry: String,
    repository: String,
    mirror: Option<String>,
}

impl Endpoint {
    fn reference(&self, tag: Option<&str>, digest: Option<&Digest>) -> Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        let mut r = match (tag, digest) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.into(), d.to_string())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
            (Some(t), None) => Reference::with_tag(registry, repository, t.into()),
            (None, None) => Reference::with_tag(registry, repository, "latest".into()),
        };
        if let Some(m) = &self.mirror {
            r.set_mirror_registry(m.clone());
        }
        r
    }
}

pub(crate) struct Remote {
    /// Manifests, and the token flow that gives [`Remote::blobs`] its
    /// credential.
    manifest_client: Client,
    blobs: Blobs,
    /// The repository's `latest`, named when asking for a token.
    probe: Reference,
    auth: RegistryAuth,
    /// Shown with 401/403 answers: where the credentials came from.
    auth_hint: String,
    endpoints: Vec<Endpoint>,
    location: String,
    timeout: Duration,
    pub(super) backoff: Backoff,
    counters: Arc<Counters>,
}

/// An open blob response being read.
struct Body {
    stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
    /// Bytes still to discard because the registry ignored `Range` and
    /// started from zero.
    skip: u64,
    /// Blob offset the response should reach, when its length is known.
    end: Option<u64>,
}

impl Remote {
    pub(crate) async fn connect(
        registry: &str,
        repository: &str,
        opts: &RegistryOptions,
        counters: Arc<Counters>,
    ) -> Result<Remote, RegistryError> {
        let location = format!("{registry}/{repository}");
        let (auth_file, creds) = auth::credentials_for(registry, repository)?;
        let auth_hint = match (&auth_file, &creds) {
            (Some(f), Some(_)) => {
                format!("check the credentials for {registry} in {}", f.display())
            }
            (Some(f), None) => format!("no credentials for {registry} in {}", f.display()),
            (None, _) => {
                "no credentials file found; log in with podman login or docker login".into()
            }
        };
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let endpoint = Endpoint {
            registry: registry.to_string(),
            repository: repository.to_string(),
            mirror: None,
        };
        // oci-client talks to docker.io as index.docker.io; the protocol
        // exception must name the host it actually connects to.
        let probe = endpoint.reference(None, None);
        let wire_host = probe.resolve_registry().to_string();
        let plain = use_plain_http(registry, &wire_host, &opts.insecure_registries);
        let config = || client_config(plain.then_some(wire_host.as_str()), opts.timeout);
        let anonymous = matches!(auth, RegistryAuth::Anonymous);
        tracing::debug!(
            %location, %wire_host, plain_http = plain, anonymous,
            "connecting to registry"
        );

        let scheme = if plain { "http" } else { "https" };
        // Anonymous until the token flow below says otherwise.
        let blobs = Blobs::new(
            scheme,
            &wire_host,
            probe.repository(),
            USER_AGENT,
            opts.timeout,
            Credential::Anonymous,
        )
        .map_err(|e| RegistryError::Protocol {
            location: location.clone(),
            what: "setting up the HTTP client".into(),
            message: error_chain(&e),
        })?;
        let mut remote = Remote {
            manifest_client: Client::new(config()),
            blobs,
            probe,
            auth,
            auth_hint,
            endpoints: vec![endpoint],
            location,
            timeout: opts.timeout,
            backoff: Backoff::new(opts.retries),
            counters,
        };
        let what = format!("connecting to {wire_host}");
        let credential = remote
            .backoff
            .run(&what, || remote.token_credential(&what))
            .await?;
        remote.blobs.set(credential);
        Ok(remote)
    }

    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoints[0]
    }

    /// The raw manifest for a tag or digest, and the sha256 of those bytes.
    pub(crate) async fn fetch_manifest(
        &self,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let reference = self.endpoint().reference(tag, digest);
        let what = match (digest, tag) {
            (Some(d), _) => format!("manifest {d}"),
            (None, Some(t)) => format!("manifest for tag {t:?}"),
            (None, None) => "manifest".to_string(),
        };
        let pull = || {
            self.backoff.run(&what, || async {
                self.counters.request();
                let fut = self.manifest_client.pull_manifest_raw(
                    &reference,
                    &self.auth,
                    manifest::ACCEPTED,
                );
                let (body, _) = self.with_timeout(&what, fut).await?;
                self.counters.received(body.len());
                Ok(body)
            })
        };
        let body = match pull().await {
            // A token the registry revoked before its stated expiry: the
            // token flow gives a fresh one, which answers or is refused.
            Err(RegistryError::Denied { status: 401, .. }) => {
                self.new_credential(&what).await?;
                pull().await?
            }
            r => r?,
        };
        let actual = Digest::of_bytes(&body);
        Ok((body, actual))
    }

    /// The digest a tag names now, from a HEAD request (the registry's
    /// `Docker-Content-Digest`): what a poller asks often, without the body.
    pub(crate) async fn head_manifest(&self, tag: &str) -> Result<Digest, RegistryError> {
        let reference = self.endpoint().reference(Some(tag), None);
        let what = format!("digest of tag {tag:?}");
        let head = || {
            self.backoff.run(&what, || async {
                self.counters.request();
                let fut = self
                    .manifest_client
                    .fetch_manifest_digest(&reference, &self.auth);
                self.with_timeout(&what, fut).await
            })
        };
        let text = match head().await {
            Err(RegistryError::Denied { status: 401, .. }) => {
                self.new_credential(&what).await?;
                head().await?
            }
            r => r?,
        };
        Digest::parse(&text).map_err(|e| RegistryError::Protocol {
            location: self.location.clone(),
            what,
            message: format!("the registry answered {text:?}: {e}"),
        })
    }

    pub(crate) async fn fetch_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, RegistryError> {
        let len = range.end - range.start;
        let what = format!("blob {digest} bytes {}-{}", range.start, range.end - 1);
        self.backoff
            .run(&what, || async {
                let mut body = self
                    .open_blob(digest, range.start, Some(len), &what)
                    .await?;
                let mut out = BytesMut::new();
                while (out.len() as u64) < len {
                    let Some(mut chunk) = self.next_chunk(&mut body, &what).await? else {
                        break;
                    };
                    let need = (len - out.len() as u64) as usize;
                    chunk.truncate(need);
                    if out.is_empty() && chunk.len() as u64 == len {
                        return Ok(chunk);
                    }
                    out.extend_from_slice(&chunk);
                }
                if (out.len() as u64) < len {
                    return Err(RegistryError::ShortBody {
                        location: self.location.clone(),
                        what: what.clone(),
                        expected: len,
                        got: out.len() as u64,
                    });
                }
                Ok(out.freeze())
            })
            .await
    }

    pub(crate) async fn stream(
        self: Arc<Self>,
        digest: &Digest,
        offset: u64,
        size: Option<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        let what = format!("blob {digest}");
        let body = self
            .backoff
            .run(&what, || self.open_blob(digest, offset, None, &what))
            .await?;
        let state = StreamState {
            remote: self,
            digest: digest.clone(),
            what,
            pos: offset,
            size,
            body: Some(body),
            failures: 0,
            done: false,
        };
        Ok(futures_util::stream::unfold(state, StreamState::step).boxed())
    }

    /// The whole blob in memory (unverified; the caller checks the digest).
    pub(crate) async fn fetch_blob(
        self: &Arc<Self>,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Bytes, RegistryError> {
        let mut stream = Remote::stream(self.clone(), digest, 0, size).await?;
        let mut out = BytesMut::with_capacity(size.unwrap_or(0).min(1 << 20) as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    // ---- publishing lazyboot's indexes (see referrers.rs) ----

    /// Asks for push rights once: oci-client keys its tokens by operation,
    /// so the uploads below only carry credentials after this.
    pub(crate) async fn authorize_push(&self) -> Result<(), RegistryError> {
        let what = format!("authorising a push to {}", self.location);
        let reference = self.endpoint().reference(None, None);
        self.backoff
            .run(&what, || async {
                self.counters.request();
                let fut =
                    self.manifest_client
                        .auth(&reference, &self.auth, RegistryOperation::Push);
                self.with_timeout(&what, fut).await.map(|_| ())
            })
            .await
    }

    /// Uploads a blob unless the repository already has it; `true` if it
    /// was uploaded. Through the authenticated client: push needs credentials.
    pub(crate) async fn push_blob(
        &self,
        digest: &Digest,
        data: Bytes,
        what: &str,
    ) -> Result<bool, RegistryError> {
        let reference = self.endpoint().reference(None, None);
        let exists = self
            .backoff
            .run(what, || async {
                self.counters.request();
                let fut = self
                    .manifest_client
                    .blob_exists(&reference, digest.as_str());
                self.with_timeout(what, fut).await
            })
            .await?;
        if exists {
            return Ok(false);
        }
        // An upload may take longer than one request's timeout: allow 1 MiB/s.
        let deadline = self.timeout + Duration::from_secs(data.len() as u64 >> 20);
        self.backoff
            .run(what, || async {
                self.counters.request();
                let fut = self
                    .manifest_client
                    .push_blob(&reference, data.clone(), digest.as_str());
                match tokio::time::timeout(deadline, fut).await {
                    Err(_) => Err(self.timeout_error(what)),
                    Ok(r) => r.map(|_| ()).map_err(|e| self.map_error(e, what)),
                }
            })
            .await?;
        Ok(true)
    }

    /// PUTs a manifest under `tag`, or under its own digest when `tag` is None.
    pub(crate) async fn push_manifest(
        &self,
        tag: Option<&str>,
        digest: &Digest,
        media_type: &'static str,
        body: Bytes,
    ) -> Result<(), RegistryError> {
        let reference = match tag {
            Some(t) => self.endpoint().reference(Some(t), None),
            None => self.endpoint().reference(None, Some(digest)),
        };
        let what = match tag {
            Some(t) => format!("pushing manifest {digest} as tag {t:?}"),
            None => format!("pushing manifest {digest}"),
        };
        self.backoff
            .run(&what, || async {
                self.counters.request();
                let fut = self.manifest_client.push_manifest_raw(
                    &reference,
                    body.clone(),
                    media_type
                        .parse()
                        .expect("media type constants are valid header values"),
                );
                self.with_timeout(&what, fut).await.map(|_| ())
            })
            .await
    }

    /// The referrers of `subject` of one artifact type, as an image index:
    /// from the referrers API, or (when that answers 404) from the
    /// referrers tag schema, both done by oci-client.
    pub(crate) async fn referrers(
        &self,
        subject: &Digest,
        artifact_type: &str,
    ) -> Result<oci_client::manifest::OciImageIndex, RegistryError> {
        let reference = self.endpoint().reference(None, Some(subject));
        let what = format!("referrers of {subject}");
        self.backoff
            .run(&what, || async {
                self.counters.request();
                let fut = self
                    .manifest_client
                    .pull_referrers(&reference, Some(artifact_type));
                let index = self.with_timeout(&what, fut).await?;
                // oci-client hands back the parsed index only; its encoded
                // size is close enough to what crossed the wire.
                self.counters
                    .received(serde_json::to_vec(&index).map_or(0, |v| v.len()));
                Ok(index)
            })
            .await
    }

    /// One GET for the blob from `offset` (for `len` bytes, or to the end).
    async fn open_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
        what: &str,
    ) -> Result<Body, RegistryError> {
        let mut renewed = false;
        loop {
            self.counters.request();
            let asked = std::time::Instant::now();
            let answer = tokio::time::timeout(self.timeout, self.blobs.get(digest, offset, len))
                .await
                .map_err(|_| self.timeout_error(what))?;
            crate::metrics::METRICS
                .registry_latency
                .observe(asked.elapsed());
            let answer = answer.map_err(|t| match t {
                Trouble::Transport(e) if e.is_timeout() => self.timeout_error(what),
                Trouble::Transport(e) => RegistryError::Transport {
                    location: self.location.clone(),
                    what: what.to_string(),
                    message: error_chain(&e),
                    attempts: 1,
                },
                Trouble::WrongRange(message) => RegistryError::Protocol {
                    location: self.location.clone(),
                    what: what.to_string(),
                    message,
                },
            })?;
            match answer {
                Answer::Body { stream, skip, end } => {
                    if skip > 0 {
                        tracing::debug!(
                            location = %self.location, %what,
                            "registry ignored Range; skipping {skip} bytes"
                        );
                    }
                    return Ok(Body { stream, skip, end });
                }
                Answer::Refused { generation, .. } if !renewed => {
                    renewed = true;
                    let renew = self.fresh_credential(what);
                    self.blobs.renew(generation, renew).await?;
                }
                Answer::Refused { message, .. } => {
                    return Err(self.status_error(401, &message, what.to_string(), None))
                }
                Answer::Failed {
                    status,
                    message,
                    retry_after,
                } => {
                    return Err(self.status_error(status, &message, what.to_string(), retry_after))
                }
            }
        }
    }

    /// The credential blobs are fetched with, from the token flow: its
    /// token, or the configured Basic credentials for a registry without a
    /// token service. oci-client keeps the token for manifests too.
    async fn token_credential(&self, what: &str) -> Result<Credential, RegistryError> {
        self.counters.request();
        let fut = self
            .manifest_client
            .auth(&self.probe, &self.auth, RegistryOperation::Pull);
        Ok(match (self.with_timeout(what, fut).await?, &self.auth) {
            (Some(t), _) => Credential::Bearer(t),
            (None, RegistryAuth::Basic(u, p)) => Credential::Basic(u.clone(), p.clone()),
            _ => Credential::Anonymous,
        })
    }

    /// A credential from the token flow, run again (after a 401).
    async fn fresh_credential(&self, what: &str) -> Result<Credential, RegistryError> {
        tracing::info!(location = %self.location, %what, "registry refused the token; asking for a new one");
        self.token_credential(what).await
    }

    /// Renew the credential for manifests (oci-client keeps the token the
    /// flow returns) and blobs alike.
    async fn new_credential(&self, what: &str) -> Result<(), RegistryError> {
        let generation = self.blobs.generation().await;
        self.blobs
            .renew(generation, self.fresh_credential(what))
            .await
    }

    /// The next non-empty piece of the requested range, counting every byte
    /// that arrived (including skipped ones: they were transferred).
    async fn next_chunk(
        &self,
        body: &mut Body,
        what: &str,
    ) -> Result<Option<Bytes>, RegistryError> {
        loop {
            let item = tokio::time::timeout(self.timeout, body.stream.next())
                .await
                .map_err(|_| self.timeout_error(what))?;
            let mut chunk = match item {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(RegistryError::Transport {
                        location: self.location.clone(),
                        what: what.to_string(),
                        message: error_chain(&e),
                        attempts: 1,
                    })
                }
                Some(Ok(c)) => c,
            };
            self.counters.received(chunk.len());
            if body.skip > 0 {
                let n = body.skip.min(chunk.len() as u64);
                chunk.advance(n as usize);
                body.skip -= n;
            }
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
    }

    async fn with_timeout<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, OciDistributionError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(self.timeout_error(what)),
            Ok(r) => r.map_err(|e| self.map_error(e, what)),
        }
    }

    fn timeout_error(&self, what: &str) -> RegistryError {
        RegistryError::Timeout {
            location: self.location.clone(),
            what: what.to_string(),
            timeout: self.timeout,
            attempts: 1,
        }
    }

    fn map_error(&self, e: OciDistributionError, what: &str) -> RegistryError {
        use OciDistributionError as E;
        let status_error =
            |status, message: &str, what| self.status_error(status, message, what, None);
        let location = self.location.clone();
        let what = what.to_string();
        match e {
            E::ServerError { code, message, .. } => status_error(code, &message, what),
            E::UnauthorizedError { .. } => status_error(401, "", what),
            E::AuthenticationFailure(reason) => {
                status_error(401, &format!("token request failed: {reason}"), what)
            }
            E::RegistryError { envelope, .. } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| {
                        serde_json::to_value(&e.code)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    })
                    .collect();
                let status = codes.first().map_or(400, |c| status_for_code(c));
                let message = envelope
                    .errors
                    .iter()
                    .zip(&codes)
                    .map(|(e, code)| format!("{code} {}", e.message).trim().to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                status_error(status, &message, what)
            }
            E::RequestError(re) if re.is_timeout() => self.timeout_error(&what),
            E::RequestError(re) => RegistryError::Transport {
                location,
                what,
                message: error_chain(&re),
                attempts: 1,
            },
            E::IoError(io) => RegistryError::Transport {
                location,
                what,
                message: error_chain(&io),
                attempts: 1,
            },
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                match (Digest::parse(&expected), Digest::parse(&actual)) {
                    (Ok(expected), Ok(actual)) => RegistryError::DigestMismatch {
                        location,
                        what,
                        expected,
                        actual,
                    },
                    _ => RegistryError::Protocol {
                        location,
                        what,
                        message: format!(
                            "digest verification failed: expected {expected}, got {actual}"
                        ),
                    },
                }
            }
            other => RegistryError::Protocol {
                location,
                what,
                message: other.to_string(),
            },
        }
    }

    fn status_error(
        &self,
        status: u16,
        message: &str,
        what: String,
        retry_after: Option<Duration>,
    ) -> RegistryError {
        let mut message = message.trim().to_string();
        if message.len() > MAX_MESSAGE_LEN {
            let cut = (0..=MAX_MESSAGE_LEN)
                .rev()
                .find(|&i| message.is_char_boundary(i))
                .unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        let location = self.location.clone();
        match status {
            404 => RegistryError::NotFound {
                location,
                what,
                detail: format!("HTTP 404{}", colon(&message)),
            },
            401 | 403 => RegistryError::Denied {
                location,
                what,
                status,
                message,
                hint: self.auth_hint.clone(),
            },
            _ => RegistryError::Status {
                location,
                what,
                status,
                message,
                attempts: 1,
                retry_after,
            },
        }
    }
}

struct StreamState {
    remote: Arc<Remote>,
    digest: Digest,
    what: String,
    pos: u64,
    size: Option<u64>,
    body: Option<Body>,
    /// Consecutive failures without progress; any delivered byte resets it,
    /// so a long download survives several separate hiccups.
    failures: u32,
    done: bool,
}

impl StreamState {
    async fn step(mut self) -> Option<(Result<Bytes, RegistryError>, Self)> {
        if self.done {
            return None;
        }
        loop {
            let Some(body) = self.body.as_mut() else {
                match self
                    .remote
                    .open_blob(&self.digest, self.pos, None, &self.what)
                    .await
                {
                    Ok(b) => self.body = Some(b),
                    Err(e) => {
                        if let Some(e) = self.fail(e).await {
                            return Some((Err(e), self));
                        }
                    }
                }
                continue;
            };
            let response_end = body.end;
            match self.remote.next_chunk(body, &self.what).await {
                Ok(Some(chunk)) => {
                    self.pos += chunk.len() as u64;
                    self.failures = 0;
                    return Some((Ok(chunk), self));
                }
                Ok(None) => {
                    let cut_short = response_end.is_some_and(|end| self.pos < end)
                        || (response_end.is_none() && self.size.is_some_and(|s| self.pos < s));
                    if cut_short {
                        let e = RegistryError::Transport {
                            location: self.remote.location.clone(),
                            what: self.what.clone(),
                            message: format!("connection closed at byte {}", self.pos),
                            attempts: 1,
                        };
                        self.body = None;
                        if let Some(e) = self.fail(e).await {
                            return Some((Err(e), self));
                        }
                        continue;
                    }
                    self.done = true;
                    // The response was complete, yet the blob is shorter than
                    // its descriptor says: asking again will not help.
                    if let Some(size) = self.size.filter(|&s| self.pos < s) {
                        let e = RegistryError::ShortBody {
                            location: self.remote.location.clone(),
                            what: self.what.clone(),
                            expected: size,
                            got: self.pos,
                        };
                        return Some((Err(e), self));
                    }
                    return None;
                }
                Err(e) => {
                    self.body = None;
                    if let Some(e) = self.fail(e).await {
                        return Some((Err(e), self));
                    }
                }
            }
        }
    }

    /// Waits before the next attempt and returns `None`, or ends the stream
    /// with the error when it is permanent or the retries are used up.
    async fn fail(&mut self, mut e: RegistryError) -> Option<RegistryError> {
        self.failures += 1;
        let backoff = &self.remote.backoff;
        if e.is_transient() && self.failures <= backoff.retries {
            tracing::warn!(
                what = %self.what, at = self.pos, error = %e,
                "blob stream interrupted, resuming"
            );
            tokio::time::sleep(backoff.delay_after(self.failures, &e)).await;
            return None;
        }
        e.set_attempts(self.failures);
        self.done = true;
        Some(e)
    }
}

fn client_config(plain_http_host: Option<&str>, timeout: Duration) -> ClientConfig {
    ClientConfig {
        protocol: match plain_http_host {
            Some(h) => ClientProtocol::HttpsExcept(vec![h.to_string()]),
            None => ClientProtocol::Https,
        },
        // We choose platforms ourselves, with containerd's rules.
        platform_resolver: None,
        connect_timeout: Some(timeout),
        read_timeout: Some(timeout),
        user_agent: USER_AGENT,
        ..Default::default()
    }
}

/// Loopback registries are local test or cache registries that never have
/// certificates; everything else needs to be listed explicitly.
pub(crate) fn use_plain_http(registry: &str, wire_host: &str, insecure: &[String]) -> bool {
    let names = [registry, wire_host];
    if names.iter().any(|n| is_loopback(host_part(n))) {
        return true;
    }
    insecure.iter().any(|entry| {
        let entry = entry
            .trim()
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        names
            .iter()
            .any(|n| entry.eq_ignore_ascii_case(n) || entry.eq_ignore_ascii_case(host_part(n)))
    })
}

/// `host:port` -> `host`, `[::1]:5000` -> `[::1]`.
fn host_part(name: &str) -> &str {
    if name.starts_with('[') {
        return match name.find(']') {
            Some(i) => &name[..=i],
            None => name,
        };
    }
    match name.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => name,
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn status_for_code(code: &str) -> u16 {
    match code {
        "BLOB_UNKNOWN" | "MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "NOT_FOUND" => 404,
        "UNAUTHORIZED" => 401,
        "DENIED" => 403,
        "TOOMANYREQUESTS" => 429,
        "UNSUPPORTED" => 405,
        _ => 400,
    }
}

/// `Display` of an error and its sources, which is where reqwest keeps the
/// useful part ("connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_for_loopback_and_listed_hosts() {
        assert!(use_plain_http("127.0.0.1:5000", "127.0.0.1:5000", &[]));
        assert!(use_plain_http("127.1.2.3", "127.1.2.3", &[]));
        assert!(use_plain_http("localhost:5000", "localhost:5000", &[]));
        assert!(use_plain_http("[::1]:5000", "[::1]:5000", &[]));
        assert!(!use_plain_http("10.0.0.1:5000", "10.0.0.1:5000", &[]));
        assert!(!use_plain_http("docker.io", "index.docker.io", &[]));
        let insecure = vec!["reg.lan:5000".to_string(), "other.lan".to_string()];
        assert!(use_plain_http("reg.lan:5000", "reg.lan:5000", &insecure));
        assert!(!use_plain_http("reg.lan:6000", "reg.lan:6000", &insecure));
        assert!(use_plain_http(
            "other.lan:7000",
            "other.lan:7000",
            &insecure
        ));
        assert!(use_plain_http("other.lan", "other.lan", &insecure));
        assert!(use_plain_http(
            "x.lan",
            "x.lan",
            &["http://x.lan/".to_string()]
        ));
    }

    #[test]
    fn references_for_tags_and_digests() {
        let e = Endpoint {
            registry: "docker.io".into(),
            repository: "library/alpine".into(),
            mirror: None,
        };
        let d = Digest::of_bytes(b"x");
        assert_eq!(e.reference(Some("3"), None).tag(), Some("3"));
        assert_eq!(e.reference(None, Some(&d)).digest(), Some(d.as_str()));
        let both = e.reference(Some("3"), Some(&d));
        assert_eq!((both.tag(), both.digest()), (Some("3"), Some(d.as_str())));
        assert_eq!(
            e.reference(None, None).resolve_registry(),
            "index.docker.io"
        );
    }

    #[test]
    fn error_codes_map_to_statuses() {
        assert_eq!(status_for_code("MANIFEST_UNKNOWN"), 404);
        assert_eq!(status_for_code("DENIED"), 403);
        assert_eq!(status_for_code("SOMETHING_ELSE"), 400);
    }
}
