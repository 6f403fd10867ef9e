//! Who may use the HTTP API. The boot network is shared with the nodes and
//! anything else plugged into it, so:
//!
//! - every call that changes state needs `Authorization: Bearer TOKEN`
//!   (the configured `api_token`, or the one `serve` keeps in
//!   `state_dir/api.token`, made with mode 0600 on first start); a missing
//!   or wrong token gets 401 and says which;
//! - read-only calls are open to the `api_readers` networks (default:
//!   loopback, the served network and the `[[dhcp.subnets]]` ones) and to
//!   anyone with the token;
//! - a node's `booted` callback is also accepted from that node's own
//!   address, so a node's init can call it without holding a secret.

use crate::config::{check_token_text, parse_net, Config};
use axum::http::{header, HeaderMap};
use ipnet::{IpNet, Ipv4Net};
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;
#[cfg(test)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why the API's credentials could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("API token file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API token file {}: {why}", path.display())]
    Bad { path: PathBuf, why: String },
}

/// The token and the networks of read-only access.
pub(crate) struct Access {
    token: String,
    readers: Vec<IpNet>,
    /// Where the token comes from, for the log.
    pub(crate) source: String,
}

/// What a request's `Authorization` header says.
#[derive(Debug, PartialEq)]
pub(crate) enum Credentials {
    Valid,
    Missing,
    Wrong,
}

impl Access {
    /// From the configuration: its token and readers, or the token file
    /// under `state_dir` and the default readers.
    pub(crate) fn from_config(config: &Config, state_dir: &Path) -> Result<Access, AuthError> {
        let (token, source) = match &config.server.api_token {
            Some(t) => (t.get_ref().clone(), "server.api_token".to_string()),
            None => {
                let path = state_dir.join("api.token");
                (load_or_create(&path)?, path.display().to_string())
            }
        };
        let readers = match &config.server.api_readers {
            Some(list) => list
                .iter()
                .filter_map(|r| parse_net(r.get_ref()).ok())
                .collect(),
            None => {
                let prefix = config.dhcp.prefix_len.unwrap_or(24).min(32);
                let served = Ipv4Net::new(config.server.address, prefix)
                    .map(|n| IpNet::V4(n.trunc()))
                    .ok();
                // Nodes behind relay agents are served networks too.
                let relayed = config.dhcp.subnets.iter().map(|s| IpNet::V4(s.net()));
                let loopback = ["127.0.0.0/8", "::1/128"].map(|n| n.parse().unwrap());
                loopback.into_iter().chain(served).chain(relayed).collect()
            }
        };
        Ok(Access {
            token,
            readers,
            source,
        })
    }

    pub(crate) fn credentials(&self, headers: &HeaderMap) -> Credentials {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Credentials::Missing;
        };
        let sent = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match sent {
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Credentials::Valid,
            _ => Credentials::Wrong,
        }
    }

    pub(crate) fn may_read(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.readers.iter().any(|n| n.contains(&peer))
    }
}

/// Compares without an early exit, so the time taken tells nothing about
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in `path`, or a new random one written there (see
/// [`crate::secret_file`]: mode 0600, crash-safely).
fn load_or_create(path: &Path) -> Result<String, AuthError> {
    let bytes = crate::secret_file::load_or_create(path, "API token", || {
        Ok(format!("{}\n", hex::encode(rand::random::<[u8; 32]>())).into_bytes())
    })
    .map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let token = String::from_utf8_lossy(&bytes).trim().to_string();
    check_token_text(&token).map_err(|why| AuthError::Bad {
        path: path.to_path_buf(),
        why,
    })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_made_private_once_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let a = load_or_create(&path).unwrap();
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), a);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), a);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "short\n").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn credentials_and_readers() {
        let access = Access {
            token: "0123456789abcdef0123".into(),
            readers: vec![
                parse_net("10.1.2.0/24").unwrap(),
                parse_net("127.0.0.1").unwrap(),
            ],
            source: "test".into(),
        };
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(access.credentials(&HeaderMap::new()), Credentials::Missing);
        assert_eq!(
            access.credentials(&with("Bearer 0123456789abcdef0123")),
            Credentials::Valid
        );
        assert_eq!(
            access.credentials(&with("Bearer 0123456789abcdef0124")),
            Credentials::Wrong
        );
        assert_eq!(access.credentials(&with("Basic abc")), Credentials::Wrong);
        assert!(access.may_read("10.1.2.77".parse().unwrap()));
        assert!(access.may_read(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(access.may_read("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!access.may_read("10.1.3.1".parse().unwrap()));
        assert!(!access.may_read("127.0.0.2".parse().unwrap()));
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(check_token_text("has a space in it!!").is_err());
    }

    #[test]
    fn default_readers_are_the_served_networks() {
        let text = r#"
[server]
interface = "lb0"
address = "10.9.0.1"
api_token = "0123456789abcdef0123"
[dhcp]
mode = "full"
pool_start = "10.9.0.100"
pool_end = "10.9.0.150"
[[dhcp.subnets]]
network = "10.218.5.0/24"
pool_start = "10.218.5.100"
pool_end = "10.218.5.150"
router = "10.218.5.1"
"#;
        let config = Config::parse(text, "t.toml").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let access = Access::from_config(&config, dir.path()).unwrap();
        for ip in ["10.9.0.77", "10.218.5.120", "127.0.0.1"] {
            assert!(access.may_read(ip.parse().unwrap()), "{ip}");
        }
        assert!(!access.may_read("10.218.6.1".parse().unwrap()));
    }
}
