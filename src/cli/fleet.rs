//! `lazyboot nodes`, `lazyboot swap`, `lazyboot swaps`: clients of a
//! running server's API. The server and token come from the flags, the
//! environment, or the server's own config file (its address, port,
//! `api_token` or the `api.token` file in its state directory).

use crate::config::Config;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone)]
pub(super) struct Server {
    /// The server's API, e.g. http://10.0.0.1:8080 (default: from --config).
    #[arg(long, global = true, env = "LAZYBOOT_SERVER")]
    server: Option<String>,
    /// The API token (default: the server config's api_token, or its
    /// state directory's api.token file).
    #[arg(long, global = true, env = "LAZYBOOT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's configuration file.
    #[arg(long, global = true, default_value = "/etc/lazyboot/lazyboot.toml")]
    config: PathBuf,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub(super) enum NodesCmd {
    /// Every node: state, group, image, digest, address, last boot.
    List,
    /// One node, with its latest boot and the swap it is in.
    Show { name: String },
    /// Assign a node an image or a group at run time (kept across
    /// restarts; its next boot uses it).
    Set {
        name: String,
        #[arg(long)]
        image: Option<String>,
        /// A group name, or "none".
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Subcommand)]
pub(super) enum GroupsCmd {
    /// Every group: its swap policy and members.
    List,
    /// Change a group's swap policy at run time (kept across restarts;
    /// the reboot command is set in the config file only).
    Set {
        name: String,
        #[arg(long)]
        follow: Option<bool>,
        #[arg(long)]
        poll_secs: Option<u64>,
        #[arg(long)]
        max_unavailable: Option<usize>,
        #[arg(long)]
        boot_timeout_secs: Option<u64>,
        #[arg(long)]
        hook_timeout_secs: Option<u64>,
        #[arg(long)]
        keep_upper: Option<bool>,
    },
}

#[derive(Args)]
pub(super) struct SwapArgs {
    /// `NODE IMAGE`, or with --group just `IMAGE`: the new image reference.
    #[arg(value_name = "NODE|IMAGE", num_args = 0..=2, required_unless_present = "cancel")]
    args: Vec<String>,
    /// Swap every node of this group.
    #[arg(long)]
    group: Option<String>,
    /// Nodes rebooting at once (default: the group's max_unavailable).
    #[arg(long)]
    max_unavailable: Option<usize>,
    /// Return once the swap has started instead of following it.
    #[arg(long)]
    no_wait: bool,
    /// Stop a running swap instead (its id).
    #[arg(long, conflicts_with_all = ["args", "group"])]
    cancel: Option<u64>,
}

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    fn new(s: &Server) -> Result<Client> {
        let config = || {
            Config::load(&s.config).with_context(|| {
                "finding the server (give --server, or --config with the server's configuration)"
            })
        };
        let base = match &s.server {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => {
                let c = config()?;
                format!("http://{}:{}", c.server.address, c.server.http_port)
            }
        };
        let token = match &s.token {
            Some(t) => Some(t.clone()),
            None => match config() {
                Ok(c) => match &c.server.api_token {
                    Some(t) => Some(t.get_ref().clone()),
                    None => std::fs::read_to_string(c.server.state_dir.join("api.token"))
                        .ok()
                        .map(|t| t.trim().to_string()),
                },
                Err(_) => None,
            },
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("setting up the HTTP client")?;
        Ok(Client { base, token, http })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: is `lazyboot serve` running there?"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let why = v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("{method} {url}: {status}: {why}");
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) async fn nodes(s: &Server, cmd: NodesCmd) -> Result<()> {
    let c = Client::new(s)?;
    let v = match &cmd {
        NodesCmd::List => c.get("/api/v1/nodes").await?,
        NodesCmd::Show { name } => c.get(&format!("/api/v1/nodes/{}", seg(name))).await?,
        NodesCmd::Set { name, image, group } => {
            let mut body = json!({});
            if let Some(i) = image {
                body["image"] = json!(i);
            }
            if let Some(g) = group {
                body["group"] = if g == "none" { Value::Null } else { json!(g) };
            }
            c.call(
                reqwest::Method::PUT,
                &format!("/api/v1/nodes/{}", seg(name)),
                Some(body),
            )
            .await?
        }
    };
    if s.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match cmd {
        NodesCmd::List => print_nodes(v.as_array().map(Vec::as_slice).unwrap_or_default()),
        _ => print_nodes(std::slice::from_ref(&v)),
    }
    Ok(())
}

pub(super) async fn groups(s: &Server, cmd: GroupsCmd) -> Result<()> {
    let c = Client::new(s)?;
    let list = match cmd {
        GroupsCmd::List => c.get("/api/v1/groups").await?,
        GroupsCmd::Set {
            name,
            follow,
            poll_secs,
            max_unavailable,
            boot_timeout_secs,
            hook_timeout_secs,
            keep_upper,
        } => {
            let body = json!({
                "follow": follow, "poll_secs": poll_secs, "max_unavailable": max_unavailable,
                "boot_timeout_secs": boot_timeout_secs, "hook_timeout_secs": hook_timeout_secs,
                "keep_upper": keep_upper,
            });
            let path = format!("/api/v1/groups/{}", seg(&name));
            json!([c.call(reqwest::Method::PUT, &path, Some(body)).await?])
        }
    };
    if s.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<7} {:<6} {:<6} {:<8} {:<6} {:<24} REBOOT",
        "GROUP", "FOLLOW", "POLL", "MAXUN", "TIMEOUT", "KEEP", "NODES"
    );
    for g in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        let nodes: Vec<String> = g["nodes"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        println!(
            "{:<12} {:<7} {:<6} {:<6} {:<8} {:<6} {:<24} {}",
            text(&g["name"]),
            g["follow"],
            format!("{}s", g["poll_secs"]),
            g["max_unavailable"],
            format!("{}s", g["boot_timeout_secs"]),
            g["keep_upper"],
            nodes.join(","),
            g["reboot"]
        );
    }
    Ok(())
}

fn short(d: &Value) -> String {
    d.as_str()
        .map(|d| d.trim_start_matches("sha256:").chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| "-".into())
}

fn print_nodes(list: &[Value]) {
    println!(
        "{:<16} {:<9} {:<10} {:<12} {:<15} {:<12} IMAGE",
        "NODE", "STATE", "GROUP", "DIGEST", "ADDRESS", "LAST BOOT"
    );
    for n in list {
        let last = &n["last_boot"];
        let last = match last["booted_ms"].as_f64() {
            Some(ms) => format!("{:.1} s", ms / 1000.0),
            None => text(&last["result"]),
        };
        let digest = match n["pending_digest"].as_str() {
            Some(_) => format!("->{}", short(&n["pending_digest"])),
            None => short(&n["digest"]),
        };
        println!(
            "{:<16} {:<9} {:<10} {:<12} {:<15} {:<12} {}",
            text(&n["node"]["name"]),
            text(&n["state"]),
            text(&n["group"]),
            digest,
            text(&n["address"]),
            last,
            text(&n["assigned"]),
        );
    }
}

pub(super) async fn swap(s: &Server, a: SwapArgs) -> Result<()> {
    let c = Client::new(s)?;
    if let Some(id) = a.cancel {
        let v = c
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/swaps/{id}/cancel"),
                None,
            )
            .await?;
        return show_swap(s, &v);
    }
    let body = match (a.args.as_slice(), &a.group) {
        ([node, image], None) => json!({ "node": node, "image": image }),
        ([image], Some(g)) => json!({ "group": g, "image": image }),
        _ => bail!("give `NODE IMAGE`, or `--group GROUP IMAGE`"),
    };
    let mut body = body;
    if let Some(m) = a.max_unavailable {
        body["max_unavailable"] = json!(m);
    }
    let v = c
        .call(reqwest::Method::POST, "/api/v1/swaps", Some(body))
        .await?;
    let id = v["id"]
        .as_u64()
        .context("the server's answer has no swap id")?;
    if a.no_wait {
        return show_swap(s, &v);
    }
    if !s.json {
        eprintln!(
            "swap {id} of {} to {} started",
            text(&v["target"]),
            text(&v["image"])
        );
    }
    // Follow it: one line per change of the swap or of one of its nodes.
    let mut seen: Vec<String> = Vec::new();
    loop {
        let v = c.get(&format!("/api/v1/swaps/{id}")).await?;
        let mut lines = vec![format!(
            "[{}/{}] swap {id}: {}{}",
            v["done"],
            v["total"],
            text(&v["state"]),
            v["message"]
                .as_str()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        )];
        for n in v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default() {
            lines.push(format!(
                "  {}: {}{}",
                text(&n["name"]),
                text(&n["state"]),
                n["message"]
                    .as_str()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ));
        }
        if !s.json {
            for l in &lines {
                if !seen.contains(l) {
                    eprintln!("{l}");
                }
            }
        }
        seen = lines;
        let state = text(&v["state"]);
        if !matches!(state.as_str(), "preparing" | "rolling") {
            if s.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            if state != "done" {
                bail!("swap {id} ended {state}: {}", text(&v["message"]));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn swaps(s: &Server, id: Option<u64>) -> Result<()> {
    let c = Client::new(s)?;
    match id {
        Some(id) => {
            let v = c.get(&format!("/api/v1/swaps/{id}")).await?;
            show_swap(s, &v)
        }
        None => {
            let v = c.get("/api/v1/swaps").await?;
            if s.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<5} {:<12} {:<16} {:<7} IMAGE / MESSAGE",
                "ID", "STATE", "TARGET", "NODES"
            );
            for w in v["swaps"].as_array().map(Vec::as_slice).unwrap_or_default() {
                println!(
                    "{:<5} {:<12} {:<16} {:<7} {}{}",
                    w["id"],
                    text(&w["state"]),
                    text(&w["target"]),
                    format!("{}/{}", w["done"], w["total"]),
                    text(&w["image"]),
                    w["message"]
                        .as_str()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

fn show_swap(s: &Server, v: &Value) -> Result<()> {
    if s.json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "swap {}: {} of {} to {} ({}/{} done){}",
        v["id"],
        text(&v["state"]),
        text(&v["target"]),
        text(&v["image"]),
        v["done"],
        v["total"],
        v["message"]
            .as_str()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    );
    for n in v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default() {
        println!(
            "  {:<16} {:<12} {} -> {}{}",
            text(&n["name"]),
            text(&n["state"]),
            short(&n["from"]),
            short(&n["to"]),
            n["message"]
                .as_str()
                .map(|m| format!("  {m}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
