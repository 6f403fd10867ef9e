//! `docs/openapi.json` as a checker of real exchanges: which statuses and
//! media types an operation documents, and whether a body matches the
//! schema documented for it (JSON Schema 2020-12, the dialect of OpenAPI
//! 3.1, with the `jsonschema` crate). Also the routes the server's source
//! declares, to compare with the document's paths.

use anyhow::{anyhow, bail, ensure, Context, Result};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The methods an OpenAPI path item may hold (lower case, as its keys).
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One HTTP exchange as the checker sees it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The media type of `Content-Type`, without its parameters.
    pub media_type: String,
    pub www_authenticate: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `curl ARGS URL` (inside network namespace `netns` if given), with the
/// status, media type and `WWW-Authenticate` of the answer.
pub fn curl(netns: Option<&str>, args: &[&str], url: &str) -> Result<Reply> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => std::process::Command::new("curl"),
    };
    // The status line goes last, after the body, which may lack a newline.
    let out = cmd
        .args(["-sS", "--max-time", "20", "-w"])
        .arg("\n%{http_code}\t%{content_type}\t%header{www-authenticate}")
        .args(args)
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, meta) = text.rsplit_once('\n').with_context(|| {
        format!(
            "curl {url}: no status line: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut f = meta.split('\t');
    let status = f.next().unwrap_or_default().trim().parse()?;
    let content_type = f.next().unwrap_or_default();
    Ok(Reply {
        status,
        media_type: content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
        www_authenticate: f.next().unwrap_or_default().to_string(),
        body: body.to_string(),
    })
}

pub struct Spec {
    pub doc: Value,
    /// Validators by the JSON pointer of their schema in `doc`.
    validators: Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
    /// (method, path template, status) of every exchange checked.
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

/// `~` and `/` escaped for a JSON pointer token.
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        Spec::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Spec> {
        let doc: Value = serde_json::from_str(text).context("the OpenAPI document")?;
        let spec = Spec {
            doc,
            validators: Mutex::default(),
            seen: Mutex::default(),
        };
        spec.check_document()?;
        Ok(spec)
    }

    /// What a checker can tell about the document itself: its version,
    /// that every `$ref` leads somewhere, that every schema compiles and
    /// every operation documents its answers.
    fn check_document(&self) -> Result<()> {
        let v = self.doc["openapi"].as_str().unwrap_or_default();
        ensure!(v.starts_with("3.1."), "openapi {v:?}: 3.1.x expected");
        let mut refs = Vec::new();
        collect_refs(&self.doc, &mut refs);
        for r in refs {
            let pointer = r
                .strip_prefix('#')
                .with_context(|| format!("$ref {r:?} is not local"))?;
            ensure!(
                self.doc.pointer(pointer).is_some(),
                "$ref {r:?} leads nowhere"
            );
        }
        let schemas = self.doc["components"]["schemas"]
            .as_object()
            .context("components.schemas")?;
        for name in schemas.keys() {
            self.validator(&format!("/components/schemas/{}", token(name)))?;
        }
        for (path, method) in self.operations() {
            let op = &self.doc["paths"][&path][&method];
            let responses = op["responses"]
                .as_object()
                .with_context(|| format!("{method} {path}: no responses"))?;
            ensure!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no 2xx response"
            );
            for status in responses.keys() {
                let r = self.response(&path, &method, status)?;
                let content = r.1["content"]
                    .as_object()
                    .with_context(|| format!("{method} {path} {status}: no content"))?;
                for media in content.keys() {
                    self.validator(&format!("{}/content/{}/schema", r.0, token(media)))?;
                }
            }
        }
        Ok(())
    }

    /// Every (path template, method) the document describes.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((path.clone(), m.to_string()));
                }
            }
        }
        out
    }

    /// The operation object of `method` `path`.
    pub fn operation(&self, path: &str, method: &str) -> Result<&Value> {
        self.doc["paths"]
            .get(path)
            .and_then(|p| p.get(method))
            .with_context(|| format!("{method} {path} is not in the document"))
    }

    /// Whether `method` `path` may be called without credentials (its
    /// `security` lists the empty requirement).
    pub fn open_without_token(&self, path: &str, method: &str) -> Result<bool> {
        let op = self.operation(path, method)?;
        let sec = op
            .get("security")
            .or_else(|| self.doc.get("security"))
            .and_then(Value::as_array)
            .with_context(|| format!("{method} {path}: no security"))?;
        Ok(sec.is_empty()
            || sec
                .iter()
                .any(|r| r.as_object().is_some_and(|o| o.is_empty())))
    }

    /// The response object documented for `status`, `$ref` followed, and
    /// its JSON pointer.
    fn response(&self, path: &str, method: &str, status: &str) -> Result<(String, &Value)> {
        let mut pointer = format!("/paths/{}/{method}/responses/{status}", token(path));
        let mut r = self
            .doc
            .pointer(&pointer)
            .with_context(|| format!("{method} {path} does not document status {status}"))?;
        while let Some(target) = r.get("$ref").and_then(Value::as_str) {
            pointer = target.trim_start_matches('#').to_string();
            r = self
                .doc
                .pointer(&pointer)
                .with_context(|| format!("$ref {target:?}"))?;
        }
        Ok((pointer, r))
    }

    /// The compiled schema at `pointer`, with the document's components
    /// beside it so that its `$ref`s resolve.
    fn validator(&self, pointer: &str) -> Result<std::sync::Arc<jsonschema::Validator>> {
        if let Some(v) = self.validators.lock().get(pointer) {
            return Ok(v.clone());
        }
        let schema = self
            .doc
            .pointer(pointer)
            .with_context(|| format!("no schema at {pointer}"))?;
        let mut root = serde_json::json!({ "$ref": format!("#/x-schema") });
        root["x-schema"] = schema.clone();
        root["components"] = self.doc["components"].clone();
        let v = jsonschema::draft202012::new(&root)
            .map_err(|e| anyhow!("schema at {pointer} does not compile: {e}"))?;
        let v = std::sync::Arc::new(v);
        self.validators
            .lock()
            .insert(pointer.to_string(), v.clone());
        Ok(v)
    }

    /// Validate `instance` against the schema at `pointer`; every error.
    pub fn validate(&self, pointer: &str, instance: &Value) -> Result<()> {
        let v = self.validator(pointer)?;
        let errors: Vec<String> = v
            .iter_errors(instance)
            .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("\n"))
        }
    }

    /// Whether `body` is a request body `method` `path` documents.
    pub fn check_request(&self, path: &str, method: &str, body: &Value) -> Result<()> {
        self.operation(path, method)?;
        let pointer = format!(
            "/paths/{}/{method}/requestBody/content/application~1json/schema",
            token(path)
        );
        self.validate(&pointer, body)
            .with_context(|| format!("request body of {method} {path}: {body}"))
    }

    /// Check a reply of `method` on `path` (a template of the document):
    /// its status is documented, and so are its media type and body for
    /// that status; a 401 carries its `WWW-Authenticate` challenge.
    pub fn check_reply(&self, path: &str, method: &str, r: &Reply) -> Result<()> {
        self.operation(path, method)?;
        let status = r.status.to_string();
        let (pointer, resp) = self
            .response(path, method, &status)
            .with_context(|| format!("{method} {path} answered {} {}", r.status, r.body))?;
        let content = resp["content"].as_object().context("content")?;
        ensure!(
            content.contains_key(&r.media_type),
            "{method} {path} {status}: media type {:?} is not documented (only {:?})",
            r.media_type,
            content.keys().collect::<Vec<_>>()
        );
        // A HEAD reply has no body to check (curl -I shows its headers).
        let instance = if method == "head" {
            None
        } else if r.media_type == "application/json" {
            Some(serde_json::from_str(&r.body).with_context(|| {
                format!("{method} {path} {status}: body is not JSON: {}", r.body)
            })?)
        } else {
            Some(Value::String(r.body.clone()))
        };
        if let Some(instance) = instance {
            let schema = format!("{pointer}/content/{}/schema", token(&r.media_type));
            self.validate(&schema, &instance).with_context(|| {
                format!(
                    "{method} {path} {status} {}: the body does not match the document:\n{}",
                    r.media_type,
                    truncate(&r.body, 2000)
                )
            })?;
        }
        if let Some(h) = resp.pointer("/headers/WWW-Authenticate/schema") {
            let value = Value::String(r.www_authenticate.clone());
            ensure!(
                jsonschema::draft202012::is_valid(h, &value),
                "{method} {path} {status}: WWW-Authenticate {:?} is not {h}",
                r.www_authenticate
            );
        }
        self.seen
            .lock()
            .insert((method.to_string(), path.to_string(), r.status));
        Ok(())
    }

    /// The documented statuses of each operation, and which of them were
    /// seen: (method, path) -> [(status, seen)].
    pub fn coverage(&self) -> BTreeMap<(String, String), Vec<(u16, bool)>> {
        let seen = self.seen.lock();
        let mut out = BTreeMap::new();
        for (path, method) in self.operations() {
            let statuses = self.doc["paths"][&path][&method]["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(s, _)| s.parse::<u16>().ok())
                .map(|s| (s, seen.contains(&(method.clone(), path.clone(), s))))
                .collect();
            out.insert((method, path), statuses);
        }
        out
    }
}

fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) => out.push(s),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The (path, method) pairs of the `.route("PATH", get(..).post(..))`
/// calls in the Rust files of `dir`: the routes the server has. A
/// catch-all `{*name}` is written `{name}`, as OpenAPI has it.
pub fn routes_in_source(dir: &Path) -> Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        out.extend(routes_in(&text).with_context(|| f.display().to_string())?);
    }
    Ok(out)
}

/// [`routes_in_source`] of one file's text.
pub fn routes_in(text: &str) -> Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(".route(") {
        let call = &rest[at + ".route(".len()..];
        let path = call
            .trim_start()
            .strip_prefix('"')
            .and_then(|s| s.split_once('"'))
            .map(|(p, _)| p.replace("{*", "{"))
            .with_context(|| format!("a .route( without a literal path: {}", truncate(call, 80)))?;
        // The call's arguments end at the parenthesis that closes it.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .context("unclosed .route(")?;
        let args = &call[..end];
        let mut methods = 0;
        for m in METHODS {
            let mut s = args;
            while let Some(i) = s.find(&format!("{m}(")) {
                let before = s[..i].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    out.insert((path.clone(), m.to_string()));
                    methods += 1;
                }
                s = &s[i + m.len()..];
            }
        }
        ensure!(methods > 0, "route {path:?} with no method found");
        rest = &call[end..];
    }
    Ok(out)
}
