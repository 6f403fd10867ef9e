//! Target platforms (`os/arch[/variant]`) and the rules for picking a manifest
//! out of a multi-platform image index.
//!
//! Matching follows containerd rather than exact string equality, because
//! indexes in the wild disagree on spelling: `arm64` is published both with
//! and without `v8`, and 32-bit `arm` without a variant means `v7`.

use std::fmt;
use std::str::FromStr;

/// An OCI platform, `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Platform {
    pub(crate) os: String,
    pub(crate) architecture: String,
    pub(crate) variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "platform {input:?}: {reason} (expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7)"
)]
/// A platform string that cannot be parsed.
pub struct PlatformError {
    pub(crate) input: String,
    pub(crate) reason: String,
}

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform this binary was built for, in OCI spelling.
    pub(crate) fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            // riscv64, arm, s390x, loongarch64, mips64 are already spelled
            // the OCI way.
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Whether an index entry for `os`/`arch`/`variant` can run on `self`.
    ///
    /// `self` is the wanted platform. Only the same architecture matches (no
    /// arm64 -> arm fallback); within it, variants compare like containerd:
    /// arm64 treats "no variant" as v8, amd64 accepts any variant unless one
    /// is asked for (then v1 up to the asked level), arm defaults to v7 and
    /// accepts older levels.
    pub(crate) fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if normalize_os(&self.os) != normalize_os(os) {
            return false;
        }
        let (want_arch, want_variant) = normalize_arch(&self.architecture, self.variant.as_deref());
        let (have_arch, have_variant) = normalize_arch(arch, variant);
        if want_arch != have_arch {
            return false;
        }
        match want_arch.as_str() {
            "amd64" => match want_variant {
                None => true,
                Some(want) => {
                    match (level(&want), level(have_variant.as_deref().unwrap_or("v1"))) {
                        (Some(w), Some(h)) => h <= w,
                        _ => Some(want) == have_variant,
                    }
                }
            },
            "arm" => {
                // normalize_arch gives arm a variant always.
                let want = want_variant.unwrap_or_else(|| "v7".into());
                let have = have_variant.unwrap_or_else(|| "v7".into());
                match (level(&want), level(&have)) {
                    (Some(w), Some(h)) => h <= w,
                    _ => want == have,
                }
            }
            _ => want_variant == have_variant,
        }
    }

    /// How good a match is, for choosing between several matching entries:
    /// an exact variant beats a compatible older one, and among compatible
    /// ones the newest level wins. `None` if it does not match at all.
    pub(crate) fn match_rank(&self, os: &str, arch: &str, variant: Option<&str>) -> Option<u32> {
        if !self.matches(os, arch, variant) {
            return None;
        }
        let (_, want) = normalize_arch(&self.architecture, self.variant.as_deref());
        let (_, have) = normalize_arch(arch, variant);
        if want == have {
            return Some(u32::MAX);
        }
        Some(have.as_deref().and_then(level).unwrap_or(0))
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_string(),
        _ => os,
    }
}

/// Canonical architecture name plus canonical variant (`v8`, `v7`, ...).
fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(|v| v.to_ascii_lowercase());
    let with_v = |v: String| {
        if v.starts_with('v') {
            v
        } else {
            format!("v{v}")
        }
    };
    match arch.as_str() {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), variant.map(with_v)),
        "aarch64" | "arm64" => {
            let v = match variant.as_deref() {
                None | Some("8") | Some("v8") | Some("v8.0") => "v8".to_string(),
                Some(_) => with_v(variant.unwrap_or_default()),
            };
            ("arm64".into(), Some(v))
        }
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => (
            "arm".into(),
            Some(variant.map(with_v).unwrap_or_else(|| "v7".into())),
        ),
        "i386" | "i686" | "x86" => ("386".into(), variant),
        _ => (arch, variant),
    }
}

/// `v3` -> 3, `v8` -> 8; anything else has no ordering.
fn level(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PlatformError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 {
            return Err(err("missing architecture"));
        }
        if parts.len() > 3 {
            return Err(err("too many components"));
        }
        let valid = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        for (name, p) in ["os", "architecture", "variant"].iter().zip(&parts) {
            if p.is_empty() {
                return Err(err(&format!("empty {name}")));
            }
            if !valid(p) {
                return Err(err(&format!("invalid characters in {name} {p:?}")));
            }
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display_roundtrip() {
        for s in [
            "linux/amd64",
            "linux/arm/v7",
            "linux/arm64/v8",
            "windows/amd64",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        let x = p("Linux/ARM64");
        assert_eq!(x, Platform::new("linux", "arm64", None));
        assert_eq!(p("linux/arm/v6").variant.as_deref(), Some("v6"));
    }

    #[test]
    fn parse_rejects_bad_input() {
        for s in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/",
            "a/b/c/d",
            "linux/am d64",
        ] {
            let e = s.parse::<Platform>().unwrap_err();
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
    }

    #[test]
    fn host_uses_oci_names() {
        let h = Platform::host();
        assert_eq!(h.os, std::env::consts::OS);
        let expected = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        assert_eq!(h.architecture, expected);
        assert!(h.matches(&h.os, &h.architecture, None));
    }

    #[test]
    fn arm64_without_variant_is_v8() {
        let want = p("linux/arm64");
        assert!(want.matches("linux", "arm64", None));
        assert!(want.matches("linux", "arm64", Some("v8")));
        assert!(want.matches("linux", "aarch64", Some("8")));
        assert!(!want.matches("linux", "arm64", Some("v9")));
        assert!(!want.matches("linux", "arm", Some("v7")));
        assert!(p("linux/arm64/v8").matches("linux", "arm64", None));
    }

    #[test]
    fn amd64_ignores_variant_unless_given() {
        let any = p("linux/amd64");
        assert!(any.matches("linux", "amd64", None));
        assert!(any.matches("linux", "amd64", Some("v3")));
        assert!(any.matches("linux", "x86_64", None));
        let v2 = p("linux/amd64/v2");
        assert!(v2.matches("linux", "amd64", None));
        assert!(v2.matches("linux", "amd64", Some("v1")));
        assert!(v2.matches("linux", "amd64", Some("v2")));
        assert!(!v2.matches("linux", "amd64", Some("v3")));
    }

    #[test]
    fn arm_defaults_to_v7_and_accepts_older() {
        let want = p("linux/arm");
        assert!(want.matches("linux", "arm", None));
        assert!(want.matches("linux", "arm", Some("v7")));
        assert!(want.matches("linux", "arm", Some("v6")));
        assert!(!want.matches("linux", "arm", Some("v8")));
        assert!(!p("linux/arm/v6").matches("linux", "arm", Some("v7")));
        assert!(p("linux/arm/v7").matches("linux", "armhf", None));
    }

    #[test]
    fn os_and_other_arches_must_be_equal() {
        let want = p("linux/riscv64");
        assert!(want.matches("linux", "riscv64", None));
        assert!(!want.matches("linux", "amd64", None));
        assert!(!want.matches("windows", "riscv64", None));
        assert!(!want.matches("linux", "riscv64", Some("rva23")));
        assert!(p("linux/386").matches("linux", "i386", None));
    }

    #[test]
    fn exact_variant_ranks_first() {
        let want = p("linux/arm/v7");
        let exact = want.match_rank("linux", "arm", Some("v7")).unwrap();
        let older = want.match_rank("linux", "arm", Some("v6")).unwrap();
        let oldest = want.match_rank("linux", "arm", Some("v5")).unwrap();
        assert!(exact > older && older > oldest);
        assert_eq!(want.match_rank("linux", "arm64", None), None);
        let amd = p("linux/amd64");
        assert!(
            amd.match_rank("linux", "amd64", None) > amd.match_rank("linux", "amd64", Some("v3"))
        );
    }
}
