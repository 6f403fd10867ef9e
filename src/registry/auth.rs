//! Registry credentials from the files podman and docker already maintain, so
//! `podman login` / `docker login` is all a user needs to do.
//!
//! Only static credentials (`auth` or `username`/`password`) are read;
//! credential helpers (`credsStore`, `credHelpers`) and identity tokens are
//! not supported and fall back to anonymous access.

use super::RegistryError;
use crate::reference::DOCKER_HUB;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where credentials are looked for, in order; the first file that exists
/// wins (the same precedence podman uses).
pub(crate) fn candidate_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = set("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = set("XDG_RUNTIME_DIR") {
        out.push(Path::new(&dir).join("containers/auth.json"));
    }
    if let Some(home) = set("HOME") {
        out.push(Path::new(&home).join(".docker/config.json"));
    }
    out
}

pub(crate) fn find_auth_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    candidate_files(env).into_iter().find(|p| p.is_file())
}

/// The auth file in effect for this process, and the credentials it holds
/// for `registry`/`repository` (if any).
pub(crate) fn credentials_for(
    registry: &str,
    repository: &str,
) -> Result<(Option<PathBuf>, Option<Credentials>), RegistryError> {
    let env = |k: &str| std::env::var(k).ok();
    let Some(path) = find_auth_file(&env) else {
        return Ok((None, None));
    };
    let creds = credentials_from_file(&path, registry, repository)?;
    Ok((Some(path), creds))
}

pub(crate) fn credentials_from_file(
    path: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let found = lookup(&text, registry, repository).map_err(|reason| RegistryError::AuthFile {
        path: path.to_path_buf(),
        reason,
    })?;
    tracing::debug!(
        file = %path.display(),
        registry,
        found = found.is_some(),
        "registry credentials"
    );
    Ok(found)
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Picks the most specific `auths` key for the repository: podman allows
/// keys like `quay.io/org` that override the plain `quay.io` entry.
pub(crate) fn lookup(
    text: &str,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, String> {
    let file: AuthFile = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let registry = canonical_host(registry);
    let mut best: Option<(usize, &String, &AuthEntry)> = None;
    for (key, entry) in &file.auths {
        let norm = normalize_key(key);
        let specificity = if norm == registry {
            0
        } else if let Some(path) = norm
            .strip_prefix(registry.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        {
            let covers = repository == path
                || repository
                    .strip_prefix(path)
                    .is_some_and(|r| r.starts_with('/'));
            if !covers {
                continue;
            }
            path.len() + 1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _, _)| specificity > s) {
            best = Some((specificity, key, entry));
        }
    }
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    decode_entry(entry).map_err(|e| format!("entry {key:?}: {e}"))
}

fn decode_entry(entry: &AuthEntry) -> Result<Option<Credentials>, String> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("\"auth\" is not base64: {e}"))?;
        let raw = String::from_utf8(raw).map_err(|_| "\"auth\" is not UTF-8 text".to_string())?;
        let (user, pass) = raw
            .split_once(':')
            .ok_or("\"auth\" must encode user:password")?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        // Identity tokens or helper-managed entries: nothing usable here.
        _ => Ok(None),
    }
}

/// `https://index.docker.io/v1/` -> `docker.io`, `http://reg:5000/` -> `reg:5000`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key)
        .trim_end_matches('/');
    let (host, path) = match k.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (k, None),
    };
    let host = canonical_host(host);
    match path {
        // Docker's legacy keys carry the API version, not a namespace.
        None | Some("v1") | Some("v2") => host,
        Some(p) => format!("{host}/{p}"),
    }
}

fn canonical_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn matches_registry_host_and_port() {
        let f = format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            b64("q:pw"),
            b64("local:secret:with:colons")
        );
        assert_eq!(lookup(&f, "quay.io", "org/app").unwrap(), creds("q", "pw"));
        assert_eq!(
            lookup(&f, "127.0.0.1:5000", "x").unwrap(),
            creds("local", "secret:with:colons")
        );
        assert_eq!(lookup(&f, "127.0.0.1:5001", "x").unwrap(), None);
        assert_eq!(lookup(&f, "ghcr.io", "x").unwrap(), None);
    }

    #[test]
    fn docker_hub_legacy_key() {
        let f = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
            b64("hubuser:hubpw")
        );
        assert_eq!(
            lookup(&f, "docker.io", "library/alpine").unwrap(),
            creds("hubuser", "hubpw")
        );
        let f = format!(r#"{{"auths":{{"docker.io":{{"auth":"{}"}}}}}}"#, b64("a:b"));
        assert_eq!(lookup(&f, "docker.io", "x/y").unwrap(), creds("a", "b"));
    }

    #[test]
    fn most_specific_namespace_wins() {
        let f = format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"quay.io/org":{{"auth":"{}"}},"quay.io/org/app":{{"auth":"{}"}}}}}}"#,
            b64("host:1"),
            b64("org:2"),
            b64("app:3")
        );
        assert_eq!(lookup(&f, "quay.io", "org/app").unwrap(), creds("app", "3"));
        assert_eq!(
            lookup(&f, "quay.io", "org/other").unwrap(),
            creds("org", "2")
        );
        assert_eq!(
            lookup(&f, "quay.io", "organic/x").unwrap(),
            creds("host", "1")
        );
        assert_eq!(lookup(&f, "quay.io", "else/x").unwrap(), creds("host", "1"));
    }

    #[test]
    fn username_password_fields_and_unusable_entries() {
        let f = r#"{"auths":{"a.io":{"username":"u","password":"p"},"b.io":{"identitytoken":"t"},"c.io":{}},"credsStore":"desktop"}"#;
        assert_eq!(lookup(f, "a.io", "x").unwrap(), creds("u", "p"));
        assert_eq!(lookup(f, "b.io", "x").unwrap(), None);
        assert_eq!(lookup(f, "c.io", "x").unwrap(), None);
        assert_eq!(lookup(r#"{"credsStore":"x"}"#, "a.io", "x").unwrap(), None);
    }

    #[test]
    fn malformed_entries_are_clear_errors() {
        assert!(lookup("{", "a.io", "x")
            .unwrap_err()
            .contains("invalid JSON"));
        let e = lookup(r#"{"auths":{"a.io":{"auth":"!!!"}}}"#, "a.io", "x").unwrap_err();
        assert!(e.contains("\"a.io\"") && e.contains("base64"), "{e}");
        let e = lookup(
            &format!(r#"{{"auths":{{"a.io":{{"auth":"{}"}}}}}}"#, b64("nocolon")),
            "a.io",
            "x",
        )
        .unwrap_err();
        assert!(e.contains("user:password"), "{e}");
    }

    #[test]
    fn file_precedence_follows_podman() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("explicit.json");
        let xdg = dir.path().join("run");
        let home = dir.path().join("home");
        std::fs::create_dir_all(xdg.join("containers")).unwrap();
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert("REGISTRY_AUTH_FILE", explicit.display().to_string());
        vars.insert("XDG_RUNTIME_DIR", xdg.display().to_string());
        vars.insert("HOME", home.display().to_string());
        let env = |k: &str| vars.get(k).cloned();

        assert_eq!(candidate_files(&env).len(), 3);
        assert_eq!(find_auth_file(&env), None);
        std::fs::write(home.join(".docker/config.json"), "{}").unwrap();
        assert_eq!(find_auth_file(&env), Some(home.join(".docker/config.json")));
        std::fs::write(xdg.join("containers/auth.json"), "{}").unwrap();
        assert_eq!(find_auth_file(&env), Some(xdg.join("containers/auth.json")));
        std::fs::write(&explicit, "{}").unwrap();
        assert_eq!(find_auth_file(&env), Some(explicit.clone()));
        // Unset or empty variables are skipped rather than read as "./".
        let none = |_: &str| Some(String::new());
        assert!(candidate_files(&none).is_empty());
    }

    #[test]
    fn reads_from_a_real_file_with_context_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"reg.test":{{"auth":"{}"}}}}}}"#, b64("u:p")),
        )
        .unwrap();
        assert_eq!(
            credentials_from_file(&path, "reg.test", "a/b").unwrap(),
            creds("u", "p")
        );
        std::fs::write(&path, "not json").unwrap();
        let e = credentials_from_file(&path, "reg.test", "a/b").unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    /// The one test that goes through the real process environment.
    #[test]
    fn honours_registry_auth_file_env() {
        let _guard = crate::registry::tests::ENV_LOCK.blocking_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"env.example.test":{{"auth":"{}"}}}}}}"#,
                b64("e:v")
            ),
        )
        .unwrap();
        let old = std::env::var_os("REGISTRY_AUTH_FILE");
        std::env::set_var("REGISTRY_AUTH_FILE", &path);
        let got = credentials_for("env.example.test", "x");
        let other = credentials_for("other.example.test", "x");
        match old {
            Some(v) => std::env::set_var("REGISTRY_AUTH_FILE", v),
            None => std::env::remove_var("REGISTRY_AUTH_FILE"),
        }
        assert_eq!(got.unwrap(), (Some(path.clone()), creds("e", "v")));
        assert_eq!(other.unwrap(), (Some(path), None));
    }
}
