//! Image references as users type them: `alpine`, `ghcr.io/org/app:1.2`,
//! `127.0.0.1:5000/x/y@sha256:...`, or `oci:DIR[:TAG]` for a layout on disk.
//!
//! Short names are expanded the way docker and podman do, so that a reference
//! printed back (for logs, cache keys, JSON output) is unambiguous.

use crate::digest::Digest;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub(crate) const DOCKER_HUB: &str = "docker.io";

/// Aliases of Docker Hub that users and old configs use interchangeably.
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io"];

/// The distribution spec bounds the repository name (not the host) at 255.
const MAX_REPOSITORY_LEN: usize = 255;

/// An image reference: a registry repository or an OCI layout on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// `registry/repository[:tag][@digest]`.
    Remote {
        /// Registry host, with port if given.
        registry: String,
        /// Repository path.
        repository: String,
        /// Tag, if given.
        tag: Option<String>,
        /// Digest, if given (it wins over the tag).
        digest: Option<Digest>,
    },
    /// `oci:DIR[:tag]`, an OCI image layout directory.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// Tag in the layout's index, if given.
        tag: Option<String>,
    },
}

/// A reference that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ImageRef {input:?}: {reason}")]
pub struct ReferenceError {
    pub(crate) input: String,
    pub(crate) reason: String,
}

impl ImageRef {
    /// The registry host (with port) of a remote reference.
    pub fn registry(&self) -> Option<&str> {
        match self {
            ImageRef::Remote { registry, .. } => Some(registry),
            ImageRef::Layout { .. } => None,
        }
    }

    /// The tag, if the reference names one.
    pub fn tag(&self) -> Option<&str> {
        match self {
            ImageRef::Remote { tag, .. } | ImageRef::Layout { tag, .. } => tag.as_deref(),
        }
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ImageRef::Remote { digest, .. } => digest.as_ref(),
            ImageRef::Layout { .. } => None,
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ReferenceError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty reference".into()));
        }
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(format!("contains the character {c:?}")));
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            return parse_layout(rest).map_err(err);
        }
        parse_remote(input).map_err(err)
    }
}

/// `DIR[:TAG]`. Like skopeo's `oci:` transport the first colon separates the
/// tag, so directory names cannot contain one; this keeps `oci:dir:t`
/// meaning the same thing for both tools.
fn parse_layout(rest: &str) -> Result<ImageRef, String> {
    let (dir, tag) = match rest.split_once(':') {
        Some((dir, tag)) => (dir, Some(tag)),
        None => (rest, None),
    };
    if dir.is_empty() {
        return Err("oci: needs a directory, as in oci:DIR or oci:DIR:TAG".into());
    }
    if let Some(tag) = tag {
        // The ref.name annotation is freer than a registry tag (it may be a
        // whole reference), so only reject what cannot be a name at all.
        if tag.is_empty() {
            return Err("empty tag after the directory; use oci:DIR or oci:DIR:TAG".into());
        }
        if tag.contains(':') {
            return Err(format!(
                "tag {tag:?} contains ':'; oci: directories cannot contain ':'"
            ));
        }
    }
    Ok(ImageRef::Layout {
        dir: PathBuf::from(dir),
        tag: tag.map(str::to_string),
    })
}

fn parse_remote(input: &str) -> Result<ImageRef, String> {
    let (name_tag, digest) = match input.split_once('@') {
        Some((n, d)) => {
            let digest = if d.contains(':') && !d.starts_with("sha256:") {
                return Err(format!("digest {d:?}: only sha256 digests are supported"));
            } else {
                Digest::parse(d).map_err(|e| e.to_string())?
            };
            (n, Some(digest))
        }
        None => (input, None),
    };
    // A ':' after the last '/' is the tag; one before it is a registry port.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => {
            let i = last_slash + i;
            (&name_tag[..i], Some(&name_tag[i + 1..]))
        }
        None => (name_tag, None),
    };
    if name.is_empty() {
        return Err("missing repository name".into());
    }
    if let Some(tag) = tag {
        validate_tag(tag)?;
    }

    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            validate_registry(first)?;
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = if DOCKER_HUB_ALIASES.contains(&registry.as_str()) {
        DOCKER_HUB.to_string()
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    validate_repository(&repository)?;

    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some("latest".to_string()),
    };
    Ok(ImageRef::Remote {
        registry,
        repository,
        tag,
        digest,
    })
}

/// `[\w][\w.-]{0,127}` from the distribution spec.
fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag after ':'".into());
    }
    if tag.len() > 128 {
        return Err(format!(
            "tag is {} characters long, at most 128 allowed",
            tag.len()
        ));
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    if !word(bytes[0]) {
        return Err(format!(
            "tag {tag:?} must start with a letter, digit or '_'"
        ));
    }
    if let Some(&b) = bytes
        .iter()
        .find(|&&b| !(word(b) || b == b'.' || b == b'-'))
    {
        return Err(format!(
            "tag {tag:?} contains {:?}; allowed are letters, digits, '_', '.' and '-'",
            b as char
        ));
    }
    Ok(())
}

/// Host name labels (or a bracketed IPv6 address), optionally `:port`.
fn validate_registry(registry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("registry {registry:?}: {why}"));
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return bad("unterminated '[' in IPv6 address");
        };
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return bad("invalid IPv6 address");
        }
        match after {
            "" => (None, None),
            p if p.starts_with(':') => (None, Some(&p[1..])),
            _ => return bad("unexpected characters after ']'"),
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return bad("empty host name");
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-';
            if !ok {
                return bad("host names are letters, digits and '-' separated by '.'");
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return bad("port must be a number from 0 to 65535");
        }
    }
    Ok(())
}

/// Path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by '/'.
fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository must be lowercase".into());
    }
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "repository is {} characters long, at most {MAX_REPOSITORY_LEN} allowed",
            repository.len()
        ));
    }
    for component in repository.split('/') {
        validate_path_component(component)
            .map_err(|why| format!("invalid repository component {component:?}: {why}"))?;
    }
    Ok(())
}

fn validate_path_component(c: &str) -> Result<(), &'static str> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err("empty (doubled or trailing '/')");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A run of separators must be exactly '.', '_', '__' or any '-'s.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        match &c[start..i] {
            "." | "_" | "__" => {}
            run if run.bytes().all(|x| x == b'-') => {}
            run if run.bytes().all(|x| matches!(x, b'.' | b'_' | b'-')) => {
                return Err("separators are '.', '_', '__' or dashes, one kind at a time")
            }
            _ => return Err("only lowercase letters, digits, '.', '_' and '-' are allowed"),
        }
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Remote {
                registry,
                repository,
                tag,
                digest,
            } => {
                write!(f, "{registry}/{repository}")?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ImageRef::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn canon(s: &str) -> String {
        s.parse::<ImageRef>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    fn reason(s: &str) -> String {
        let e = s.parse::<ImageRef>().unwrap_err();
        assert_eq!(e.input, s);
        e.reason
    }

    #[test]
    fn docker_hub_short_names() {
        assert_eq!(canon("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(canon("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(canon("user/app"), "docker.io/user/app:latest");
        assert_eq!(canon("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(
            canon("index.docker.io/library/alpine:1"),
            "docker.io/library/alpine:1"
        );
        assert_eq!(
            canon("registry-1.docker.io/user/app"),
            "docker.io/user/app:latest"
        );
        assert_eq!(canon("user/team/app:v1"), "docker.io/user/team/app:v1");
    }

    #[test]
    fn registries_with_ports_and_localhost() {
        assert_eq!(canon("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000/x/y:1");
        assert_eq!(canon("localhost/app"), "localhost/app:latest");
        assert_eq!(canon("localhost:5000/app:dev"), "localhost:5000/app:dev");
        assert_eq!(canon("ghcr.io/org/app"), "ghcr.io/org/app:latest");
        assert_eq!(canon("[::1]:5000/app:x"), "[::1]:5000/app:x");
        assert_eq!(canon("Quay.IO/org/app"), "Quay.IO/org/app:latest");
        match "127.0.0.1:5000/x/y:1".parse::<ImageRef>().unwrap() {
            ImageRef::Remote {
                registry,
                repository,
                tag,
                digest,
            } => {
                assert_eq!(registry, "127.0.0.1:5000");
                assert_eq!(repository, "x/y");
                assert_eq!(tag.as_deref(), Some("1"));
                assert!(digest.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digests_with_and_without_tag() {
        let r: ImageRef = format!("quay.io/a/b@{D}").parse().unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().as_str(), D);
        assert_eq!(r.to_string(), format!("quay.io/a/b@{D}"));
        let r: ImageRef = format!("quay.io/a/b:v2@{D}").parse().unwrap();
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.to_string(), format!("quay.io/a/b:v2@{D}"));
        assert_eq!(
            canon(&format!("busybox@{D}")),
            format!("docker.io/library/busybox@{D}")
        );
        assert_eq!(
            canon(&format!("localhost:5000/b:1@{D}")),
            format!("localhost:5000/b:1@{D}")
        );
    }

    #[test]
    fn display_parses_back_to_the_same_value() {
        for s in [
            "alpine",
            "127.0.0.1:5000/x/y:1",
            "oci:/tmp/l:t",
            "oci:rel/dir",
        ] {
            let r: ImageRef = s.parse().unwrap();
            let again: ImageRef = r.to_string().parse().unwrap();
            assert_eq!(r, again);
        }
    }

    #[test]
    fn repository_must_be_lowercase() {
        let e = "Foo:bar".parse::<ImageRef>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"ImageRef "Foo:bar": repository must be lowercase"#
        );
        assert_eq!(reason("ghcr.io/Org/app"), "repository must be lowercase");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(reason(""), "empty reference");
        assert!(reason("alp ine").contains("' '"));
        assert!(reason("ghcr.io/").contains("empty"));
        assert!(reason("ghcr.io//x").contains("empty"));
        assert!(reason("ghcr.io/x/").contains("empty"));
        assert!(reason("app:").contains("empty tag"));
        assert!(reason(":tag").contains("missing repository"));
        assert!(reason("app:-bad").contains("must start"));
        // A ':' before the last '/' makes the first component a registry.
        assert!(reason("app:a/b").contains("port"));
        assert!(reason(&format!("app:{}", "x".repeat(129))).contains("at most 128"));
        assert!(reason("a..b").contains("separators"));
        assert!(reason("a._b").contains("separators"));
        assert!(reason("-ab").contains("must start"));
        assert!(reason("ab_").contains("must start and end"));
        assert!(reason("a$b").contains("only lowercase"));
        assert!(reason("app@sha256:abc").contains("invalid digest"));
        assert!(reason(&format!("app@sha512:{}", "a".repeat(128))).contains("only sha256"));
        assert!(reason("reg.io:99999/app").contains("port"));
        assert!(reason("reg.io:/app").contains("port"));
        assert!(reason("bad_host.io/app").contains("host names"));
        assert!(reason("[::1/app").contains("IPv6"));
        assert!(reason(&format!("x/{}", "a".repeat(300))).contains("at most 255"));
        // Valid separators, for contrast.
        assert_eq!(
            canon("a__b/c---d/e.f_g"),
            "docker.io/a__b/c---d/e.f_g:latest"
        );
    }

    #[test]
    fn oci_layouts() {
        assert_eq!(
            "oci:/srv/img:t".parse::<ImageRef>().unwrap(),
            ImageRef::Layout {
                dir: "/srv/img".into(),
                tag: Some("t".into())
            }
        );
        assert_eq!(
            "oci:./img".parse::<ImageRef>().unwrap(),
            ImageRef::Layout {
                dir: "./img".into(),
                tag: None
            }
        );
        assert_eq!(canon("oci:img:v1.0"), "oci:img:v1.0");
        assert!(reason("oci:").contains("needs a directory"));
        assert!(reason("oci::t").contains("needs a directory"));
        assert!(reason("oci:dir:").contains("empty tag"));
        assert!(reason("oci:dir:a:b").contains("cannot contain ':'"));
        let r: ImageRef = "oci:d:t".parse().unwrap();
        assert_eq!(r.registry(), None);
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.digest(), None);
    }
}
