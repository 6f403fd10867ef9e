//! `docs/openapi.json` against the server: a real `lazyboot serve` (real
//! registry, lab network, a group of three scripted nodes), with boots and
//! swaps recorded, is called once or more for every operation the document
//! describes, with and without the token, from a reader's address and from
//! an outsider's, and with each documented mistake. Every answer's status
//! must be documented for its operation, and its media type and body must
//! match what the document says for that status. The document's paths and
//! methods must be exactly the routes in `src/api/`.

mod common;

use anyhow::{ensure, Context, Result};
use common::fleet_lab::{image, lab, wait_for, Lab, TOKEN};
use common::openapi::{curl, routes_in, routes_in_source, Reply, Spec};
use common::serve::{Serve, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn spec() -> Result<Spec> {
    Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
}

/// Who makes a call.
#[derive(Clone, Copy)]
enum Who<'a> {
    /// The host, an `api_readers` address, with the token.
    Token,
    /// The host without the token.
    Reader,
    /// The host with a wrong token.
    WrongToken,
    /// From this address in the lab's namespace (a node's; not a reader).
    From(&'a str),
    /// From that address, with the token.
    FromWithToken(&'a str),
}

struct Api<'a> {
    l: &'a Lab,
    spec: &'a Spec,
    srv: &'a Server,
    /// Calls made, for the report at the end.
    calls: std::cell::Cell<usize>,
}

impl Api<'_> {
    /// `method` `path` (a concrete path, query included) of the document's
    /// `template`, checked against the document; the reply.
    fn call(
        &self,
        who: Who,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
        extra: &[&str],
    ) -> Result<Reply> {
        let mut args: Vec<String> = match method {
            "head" => vec!["-I".into()],
            m => vec!["-X".into(), m.to_uppercase()],
        };
        let bearer = |t: &str| vec!["-H".to_string(), format!("Authorization: Bearer {t}")];
        let (netns, from) = match who {
            Who::Token => {
                args.extend(bearer(TOKEN));
                (None, None)
            }
            Who::Reader => (None, None),
            Who::WrongToken => {
                args.extend(bearer("not-the-token-0123456789"));
                (None, None)
            }
            Who::From(ip) => (Some(self.l.lab.ns.as_str()), Some(ip)),
            Who::FromWithToken(ip) => {
                args.extend(bearer(TOKEN));
                (Some(self.l.lab.ns.as_str()), Some(ip))
            }
        };
        if let Some(ip) = from {
            args.extend(["--interface".into(), ip.into()]);
        }
        if let Some(b) = body {
            args.extend([
                "-H".into(),
                "Content-Type: application/json".into(),
                "--data-binary".into(),
                b.into(),
            ]);
        }
        let url = format!("http://{}:{}{path}", self.l.lab.server_ip, self.l.http_port);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(netns, &args, &url)?;
        self.calls.set(self.calls.get() + 1);
        self.spec
            .check_reply(template, method, &r)
            .with_context(|| {
                format!(
                    "{} {path}\nserver log:\n{}",
                    method.to_uppercase(),
                    common::tail(&self.srv.log(), 30)
                )
            })?;
        Ok(r)
    }

    /// [`Api::call`] that must answer `status`.
    fn expect(
        &self,
        status: u16,
        who: Who,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Reply> {
        self.expect_with(status, who, method, template, path, body, &[])
    }

    /// [`Api::expect`] with more arguments for curl.
    #[allow(clippy::too_many_arguments)]
    fn expect_with(
        &self,
        status: u16,
        who: Who,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
        extra: &[&str],
    ) -> Result<Reply> {
        let r = self.call(who, method, template, path, body, extra)?;
        ensure!(
            r.status == status,
            "{} {path}: {} {}, not {status}",
            method.to_uppercase(),
            r.status,
            r.body
        );
        Ok(r)
    }

    /// A JSON body sent to `method` `template`: it is checked against the
    /// request schema first, which must accept it (`valid`) or not, as the
    /// server does.
    fn body(&self, method: &str, template: &str, body: &Value, valid: bool) -> Result<String> {
        let r = self.spec.check_request(template, method, body);
        ensure!(
            r.is_ok() == valid,
            "the document {} the body {body} of {method} {template}: {r:?}",
            if valid { "rejects" } else { "accepts" }
        );
        Ok(body.to_string())
    }
}

/// Every documented read (GET that changes nothing) with a concrete path;
/// `swap` is a recorded swap.
fn reads(swap: u64) -> Vec<(&'static str, String)> {
    vec![
        ("/api/v1/nodes", "/api/v1/nodes"),
        ("/api/v1/nodes/{name}", "/api/v1/nodes/n1"),
        ("/api/v1/nodes/{name}/profiles", "/api/v1/nodes/n1/profiles"),
        (
            "/api/v1/nodes/{name}/profiles/{boot}",
            "/api/v1/nodes/n1/profiles/latest",
        ),
        ("/api/v1/groups", "/api/v1/groups"),
        ("/api/v1/groups/{name}", "/api/v1/groups/lab"),
        ("/api/v1/images", "/api/v1/images"),
        ("/api/v1/swaps", "/api/v1/swaps"),
        ("/api/v1/swaps/{id}", &format!("/api/v1/swaps/{swap}")),
        ("/metrics", "/metrics"),
    ]
    .into_iter()
    .map(|(t, p)| (t, p.to_string()))
    .collect()
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_server() -> Result<()> {
    let spec = spec()?;
    let server = routes_in_source(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api"))?;
    // axum's `get` answers HEAD too: a documented HEAD needs a GET route.
    let documented: std::collections::BTreeSet<(String, String)> = spec
        .operations()
        .into_iter()
        .map(|(p, m)| match m.as_str() {
            "head" if spec.operations().contains(&(p.clone(), "get".into())) => (p, "get".into()),
            _ => (p, m),
        })
        .collect();
    ensure!(server.len() >= 10, "too few routes found: {server:?}");
    let missing: Vec<_> = server.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&server).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "routes of src/api/ not in docs/openapi.json: {missing:?}\n\
         operations of docs/openapi.json the server does not have: {extra:?}"
    );
    Ok(())
}

/// The checker itself: what drifts from the document is caught.
#[test]
fn the_checker_rejects_what_the_document_does_not_say() -> Result<()> {
    let spec = spec()?;
    let reply = |status: u16, media: &str, body: Value| Reply {
        status,
        media_type: media.into(),
        www_authenticate: String::new(),
        body: body.to_string(),
    };
    let swap = json!({
        "id": 1, "target": "node:n1", "image": "r/os:1", "digest": null, "state": "rolling",
        "started_unix_ms": 1, "ended_unix_ms": null, "message": null, "max_unavailable": 1,
        "followed": false, "done": 0, "total": 1,
        "nodes": [{ "name": "n1", "state": "rebooting", "from": null, "to": "sha256:ab",
                    "message": null, "boot_before": 3 }],
    });
    let t = "/api/v1/swaps/{id}";
    spec.check_reply(t, "get", &reply(200, "application/json", swap.clone()))?;
    let mut bad = Vec::new();
    let mut renamed = swap.clone();
    let m = renamed.as_object_mut().unwrap();
    let v = m.remove("max_unavailable").unwrap();
    m.insert("max_unavail".into(), v);
    bad.push(("a renamed field", reply(200, "application/json", renamed)));
    let mut state = swap.clone();
    state["nodes"][0]["state"] = json!("rebooted");
    bad.push((
        "a state out of its enum",
        reply(200, "application/json", state),
    ));
    let mut null = swap.clone();
    null["target"] = Value::Null;
    bad.push((
        "null where none is allowed",
        reply(200, "application/json", null),
    ));
    let mut typ = swap.clone();
    typ["done"] = json!("0");
    bad.push((
        "a string for an integer",
        reply(200, "application/json", typ),
    ));
    bad.push((
        "an undocumented status",
        reply(418, "application/json", json!({"error": "x"})),
    ));
    bad.push(("an undocumented media type", reply(200, "text/plain", swap)));
    bad.push((
        "an error body of another shape",
        reply(404, "application/json", json!({"message": "x"})),
    ));
    for (what, r) in bad {
        ensure!(
            spec.check_reply(t, "get", &r).is_err(),
            "{what} passed: {}",
            r.body
        );
    }
    ensure!(spec
        .check_reply("/api/v1/nowhere", "get", &reply(200, "", json!(1)))
        .is_err());
    // A document whose $ref leads nowhere, or whose schema is not one.
    let mut doc = spec.doc.clone();
    doc["components"]["schemas"]["Swap"]["properties"]["state"]["$ref"] =
        json!("#/components/schemas/Nothing");
    ensure!(Spec::parse(&doc.to_string()).is_err(), "a dangling $ref");
    let mut doc = spec.doc.clone();
    doc["components"]["schemas"]["Swap"]["required"] = json!("id");
    ensure!(Spec::parse(&doc.to_string()).is_err(), "an invalid schema");
    // Request bodies: what the server's deny_unknown_fields refuses.
    let put = "/api/v1/nodes/{name}";
    spec.check_request(put, "put", &json!({"group": null}))?;
    ensure!(spec
        .check_request(put, "put", &json!({"image": "a", "colour": "b"}))
        .is_err());
    // The route parser reads methods and paths, nested calls included.
    let routes = routes_in(
        r#"Router::new()
            .route("/a/{x}", get(a).post(b))
            .route("/m", get(metrics).with_state(f.clone()))
            .route( "/c", put(input_of(c)) )
            .route("/f/{*rest}", get(f))"#,
    )?;
    let want: Vec<(String, String)> = [
        ("/a/{x}", "get"),
        ("/a/{x}", "post"),
        ("/c", "put"),
        ("/f/{rest}", "get"),
        ("/m", "get"),
    ]
    .iter()
    .map(|(p, m)| (p.to_string(), m.to_string()))
    .collect();
    ensure!(
        routes.into_iter().collect::<Vec<_>>() == want,
        "route parser"
    );
    Ok(())
}

#[test]
fn every_operation_answers_as_the_document_says() -> Result<()> {
    if !common::require_root_and_tools("openapi", &["ip", "skopeo", "umoci", "curl", "python3"]) {
        return Ok(());
    }
    let started = Instant::now();
    let spec = spec()?;
    // Reads are open to the server's own address (the host's calls come
    // from it) and not to the nodes' addresses: both sides of 403.
    let l = lab(false, |lab| {
        format!("api_readers = [\"{}/32\"]", lab.server_ip)
    })?;
    image(l.tmp.path(), &l.reg, "v1", &["live"])?;
    // v2 has a file in its boot directory, for the HTTP boot route.
    let d = l.tmp.path().join("img-v2");
    std::fs::create_dir_all(&d)?;
    common::netboot::one_layer_image(
        &d,
        "mkdir -p $r/etc $r/boot && printf 'NAME=fleet\\nVERSION=v2\\n' > $r/etc/os-release \
         && printf 'hello from /boot\\n' > $r/boot/hello.txt",
    )?;
    common::fixture::push(&d.join("layout"), "os", &l.reg, "fleet:v2")?;
    let v2 = l.reg.reference("fleet:v2");
    let mut srv = Serve::new(&l.config)
        .log(&l.tmp.path().join("serve.log"))
        .start()?;
    let sim = l.sim()?;
    let api = Api {
        l: &l,
        spec: &spec,
        srv: &srv,
        calls: Default::default(),
    };
    let ip = |n: usize| l.nodes[n].ip.to_string();
    let (n1_ip, n2_ip, n3_ip) = (ip(0), ip(1), ip(2));

    // Before any boot: no profile of n3 yet.
    let t_profile = "/api/v1/nodes/{name}/profiles/{boot}";
    api.expect(
        404,
        Who::Reader,
        "get",
        t_profile,
        "/api/v1/nodes/n3/profiles/latest",
        None,
    )?;

    // n1 boots (over DHCP and NFS, then its booted callback from its own
    // address), so that it has a profile.
    sim.reboot("n1")?;
    let b = sim.wait_boots("n1", 1, Duration::from_secs(60))?;
    ensure!(b[0].booted, "{b:?}\n{}", common::tail(&srv.log(), 40));

    // --- A swap of n1 onto v2, through to its end.
    let t_swaps = "/api/v1/swaps";
    let body = api.body(
        "post",
        t_swaps,
        &json!({"node": "n1", "image": v2, "max_unavailable": 1}),
        true,
    )?;
    let s = api.expect(202, Who::Token, "post", t_swaps, t_swaps, Some(&body))?;
    let first = s.json()["id"].as_u64().context("swap id")?;
    let t_swap = "/api/v1/swaps/{id}";
    wait_for(
        "the swap of n1 to end",
        Duration::from_secs(60),
        &srv,
        || {
            let r = api.expect(
                200,
                Who::Reader,
                "get",
                t_swap,
                &format!("/api/v1/swaps/{first}"),
                None,
            )?;
            let v = r.json();
            Ok((!matches!(v["state"].as_str(), Some("preparing" | "rolling"))).then_some(v))
        },
    )?;

    // --- A swap kept running: n2 ignores its reboot request while held.
    sim.held.lock().push("n2".into());
    let body = api.body("post", t_swaps, &json!({"node": "n2", "image": v2}), true)?;
    let s = api.expect(202, Who::Token, "post", t_swaps, t_swaps, Some(&body))?;
    let running = s.json()["id"].as_u64().context("swap id")?;
    wait_for("n2 to be rebooting", Duration::from_secs(30), &srv, || {
        let r = api.expect(
            200,
            Who::Reader,
            "get",
            t_swap,
            &format!("/api/v1/swaps/{running}"),
            None,
        )?;
        Ok((r.json()["nodes"][0]["state"] == "rebooting").then_some(()))
    })?;
    let t_node = "/api/v1/nodes/{name}";
    let n2 = api.expect(200, Who::Reader, "get", t_node, "/api/v1/nodes/n2", None)?;
    ensure!(n2.json()["state"] == "swapping", "{}", n2.body);
    // A node in a running swap is busy.
    let body = api.body("put", t_node, &json!({"image": v2}), true)?;
    api.expect(
        409,
        Who::Token,
        "put",
        t_node,
        "/api/v1/nodes/n2",
        Some(&body),
    )?;
    let body = api.body("post", t_swaps, &json!({"node": "n2", "image": v2}), true)?;
    api.expect(409, Who::Token, "post", t_swaps, t_swaps, Some(&body))?;

    // --- Every read: open to a reader, 403 to a node's address, 401 with a
    // wrong token, fine with the token from anywhere.
    for (template, path) in reads(first) {
        let path = path.as_str();
        ensure!(spec.open_without_token(template, "get")?, "{template}");
        api.expect(200, Who::Reader, "get", template, path, None)?;
        api.expect(200, Who::Token, "get", template, path, None)?;
        api.expect(403, Who::From(&n3_ip), "get", template, path, None)?;
        api.expect(200, Who::FromWithToken(&n3_ip), "get", template, path, None)?;
        let r = api.expect(401, Who::WrongToken, "get", template, path, None)?;
        ensure!(r.www_authenticate.contains("Bearer"), "{r:?}");
    }

    // --- Profiles in every format, and their mistakes.
    let t_profiles = "/api/v1/nodes/{name}/profiles";
    let p = api.expect(
        200,
        Who::Reader,
        "get",
        t_profiles,
        "/api/v1/nodes/n1/profiles",
        None,
    )?;
    let boots = p.json()["boots"].clone();
    ensure!(boots.as_array().is_some_and(|b| !b.is_empty()), "{boots}");
    api.expect(
        404,
        Who::Reader,
        "get",
        t_profiles,
        "/api/v1/nodes/nope/profiles",
        None,
    )?;
    for (query, media) in [
        ("", "application/json"),
        ("?format=json", "application/json"),
        ("?format=text", "text/plain"),
        ("?format=html", "text/html"),
        ("?format=trace", "application/json"),
    ] {
        for boot in ["latest", "1"] {
            let r = api.expect(
                200,
                Who::Reader,
                "get",
                t_profile,
                &format!("/api/v1/nodes/n1/profiles/{boot}{query}"),
                None,
            )?;
            ensure!(r.media_type == media, "{query}: {}", r.media_type);
        }
    }
    for (path, status) in [
        ("/api/v1/nodes/n1/profiles/latest?format=pdf", 400),
        ("/api/v1/nodes/n1/profiles/first", 400),
        ("/api/v1/nodes/n1/profiles/999", 404),
        ("/api/v1/nodes/nope/profiles/latest", 404),
    ] {
        api.expect(status, Who::Reader, "get", t_profile, path, None)?;
    }

    // --- Nodes.
    api.expect(404, Who::Reader, "get", t_node, "/api/v1/nodes/nope", None)?;
    let put = |status: u16, who: Who, path: &str, body: &Value, valid: bool| {
        let b = api.body("put", t_node, body, valid)?;
        api.expect(status, who, "put", t_node, path, Some(&b))
    };
    let n3 = "/api/v1/nodes/n3";
    let r = put(200, Who::Token, n3, &json!({"group": null}), true)?;
    ensure!(r.json()["group"].is_null(), "{}", r.body);
    let r = put(
        200,
        Who::Token,
        n3,
        &json!({"image": v2, "group": "lab"}),
        true,
    )?;
    ensure!(r.json()["assigned"] == json!(v2), "{}", r.body);
    put(401, Who::Reader, n3, &json!({"group": null}), true)?;
    put(401, Who::From(&n3_ip), n3, &json!({"group": null}), true)?;
    put(401, Who::WrongToken, n3, &json!({"group": null}), true)?;
    put(
        404,
        Who::Token,
        "/api/v1/nodes/nope",
        &json!({"image": v2}),
        true,
    )?;
    put(404, Who::Token, n3, &json!({"group": "nogroup"}), true)?;
    put(
        422,
        Who::Token,
        n3,
        &json!({"image": "UPPER/Case::bad"}),
        true,
    )?;
    put(422, Who::Token, n3, &json!({"group": "a;rm -rf /"}), true)?;
    put(400, Who::Token, n3, &json!({}), false)?;
    put(
        400,
        Who::Token,
        n3,
        &json!({"image": v2, "colour": "red"}),
        false,
    )?;
    put(400, Who::Token, n3, &json!({"image": 7}), false)?;
    api.expect(400, Who::Token, "put", t_node, n3, Some("{not json"))?;

    // --- Groups.
    let t_group = "/api/v1/groups/{name}";
    let lab = "/api/v1/groups/lab";
    api.expect(
        404,
        Who::Reader,
        "get",
        t_group,
        "/api/v1/groups/nope",
        None,
    )?;
    let put_group = |status: u16, who: Who, path: &str, body: &Value, valid: bool| {
        let b = api.body("put", t_group, body, valid)?;
        api.expect(status, who, "put", t_group, path, Some(&b))
    };
    let r = put_group(200, Who::Token, lab, &json!({"max_unavailable": 2}), true)?;
    ensure!(r.json()["max_unavailable"] == 2, "{}", r.body);
    put_group(401, Who::Reader, lab, &json!({"follow": false}), true)?;
    put_group(
        404,
        Who::Token,
        "/api/v1/groups/nope",
        &json!({"follow": false}),
        true,
    )?;
    put_group(422, Who::Token, lab, &json!({"poll_secs": 0}), true)?;
    put_group(
        400,
        Who::Token,
        lab,
        &json!({"reboot": ["/bin/sh", "-c", "id"]}),
        false,
    )?;
    api.expect(400, Who::Token, "put", t_group, lab, Some("{not json"))?;

    // --- Swaps: mistakes, cancels.
    let post = |status: u16, body: &Value, valid: bool| {
        let b = api.body("post", t_swaps, body, valid)?;
        api.expect(status, Who::Token, "post", t_swaps, t_swaps, Some(&b))
    };
    post(404, &json!({"node": "nope", "image": v2}), true)?;
    post(404, &json!({"group": "nogroup", "image": v2}), true)?;
    post(
        422,
        &json!({"node": "n3", "image": "UPPER/Case::bad"}),
        true,
    )?;
    post(422, &json!({"image": v2}), false)?;
    post(
        422,
        &json!({"node": "n3", "group": "lab", "image": v2}),
        false,
    )?;
    post(
        422,
        &json!({"node": "n3", "image": v2, "max_unavailable": 0}),
        false,
    )?;
    post(400, &json!({"node": "n3"}), false)?;
    post(
        400,
        &json!({"node": "n3", "image": v2, "when": "now"}),
        false,
    )?;
    api.expect(400, Who::Token, "post", t_swaps, t_swaps, Some("[1,"))?;
    let body = api.body("post", t_swaps, &json!({"group": "lab", "image": v2}), true)?;
    api.expect(401, Who::Reader, "post", t_swaps, t_swaps, Some(&body))?;
    api.expect(401, Who::WrongToken, "post", t_swaps, t_swaps, Some(&body))?;
    api.expect(400, Who::Reader, "get", t_swap, "/api/v1/swaps/abc", None)?;
    api.expect(404, Who::Reader, "get", t_swap, "/api/v1/swaps/999", None)?;

    let t_cancel = "/api/v1/swaps/{id}/cancel";
    let cancel = |id: &str| format!("/api/v1/swaps/{id}/cancel");
    ensure!(!spec.open_without_token(t_cancel, "post")?);
    let running_path = cancel(&running.to_string());
    api.expect(401, Who::Reader, "post", t_cancel, &running_path, None)?;
    api.expect(401, Who::WrongToken, "post", t_cancel, &running_path, None)?;
    api.expect(202, Who::Token, "post", t_cancel, &running_path, None)?;
    api.expect(
        409,
        Who::Token,
        "post",
        t_cancel,
        &cancel(&first.to_string()),
        None,
    )?;
    api.expect(404, Who::Token, "post", t_cancel, &cancel("999"), None)?;
    api.expect(400, Who::Token, "post", t_cancel, &cancel("abc"), None)?;
    sim.held.lock().clear();

    // --- Booted: a boot in progress of n3 (its DHCP request, as a PXE
    // ROM's), ended with the token; then one of n1 from its own address.
    let t_booted = "/api/v1/nodes/{name}/booted";
    ensure!(!spec.open_without_token(t_booted, "get")?);
    let pxe = |mac: &str| -> Result<()> {
        common::dhcpc::run_client_in(
            &l.lab.ns,
            &l.lab.client_if,
            "dora",
            &[
                "--mac",
                mac,
                "--timeout",
                "5",
                "--opt",
                "60=s:PXEClient:Arch:00000:UNDI:002001",
                "--opt",
                "93=h:0000",
            ],
        )
        .map(|_| ())
    };
    pxe(&l.nodes[2].mac)?;
    let n3_booted = "/api/v1/nodes/n3/booted";
    for who in [Who::Reader, Who::WrongToken, Who::From(&n2_ip)] {
        api.expect(401, who, "post", t_booted, n3_booted, None)?;
        api.expect(401, who, "get", t_booted, n3_booted, None)?;
    }
    let r = api.expect(200, Who::Token, "post", t_booted, n3_booted, None)?;
    ensure!(r.json()["node"] == "n3", "{}", r.body);
    api.expect(409, Who::Token, "post", t_booted, n3_booted, None)?;
    api.expect(409, Who::Token, "get", t_booted, n3_booted, None)?;
    api.expect(
        404,
        Who::Token,
        "get",
        t_booted,
        "/api/v1/nodes/nope/booted",
        None,
    )?;
    api.expect(
        404,
        Who::Token,
        "post",
        t_booted,
        "/api/v1/nodes/nope/booted",
        None,
    )?;
    // n1 is busy only once its swap ended; its address is its credential.
    pxe(&l.nodes[0].mac)?;
    api.expect(
        200,
        Who::From(&n1_ip),
        "get",
        t_booted,
        "/api/v1/nodes/n1/booted",
        None,
    )?;

    // --- The dashboard: served to anyone, outside the guard.
    for (template, path) in [("/", "/"), ("/index.html", "/index.html")] {
        ensure!(spec.open_without_token(template, "get")?, "{template}");
        api.expect(200, Who::Reader, "get", template, path, None)?;
        api.expect(200, Who::From(&n3_ip), "get", template, path, None)?;
    }

    // --- HTTP boot files: a reader, a range, HEAD, the refusals.
    let t_boot = "/boot/{node}/{path}";
    let f = "/boot/n1/hello.txt";
    let r = api.expect(200, Who::Reader, "get", t_boot, f, None)?;
    ensure!(r.body == "hello from /boot\n", "{r:?}");
    let range = ["-H", "Range: bytes=0-5"];
    let r = api.expect_with(206, Who::Reader, "get", t_boot, f, None, &range)?;
    ensure!(r.body == "hello ", "{r:?}");
    api.expect_with(206, Who::Reader, "head", t_boot, f, None, &range)?;
    let beyond = ["-H", "Range: bytes=99999999-"];
    api.expect_with(416, Who::Reader, "get", t_boot, f, None, &beyond)?;
    let as_is = ["--path-as-is"];
    let up = "/boot/n1/../n2/hello.txt";
    api.expect_with(400, Who::Reader, "get", t_boot, up, None, &as_is)?;
    api.expect(200, Who::Token, "head", t_boot, f, None)?;
    api.expect(403, Who::From(&n3_ip), "get", t_boot, f, None)?;
    let r = api.expect(403, Who::FromWithToken(&n3_ip), "get", t_boot, f, None)?;
    ensure!(r.media_type == "text/plain", "another node's files: {r:?}");
    api.expect(401, Who::WrongToken, "get", t_boot, f, None)?;
    api.expect(
        404,
        Who::Reader,
        "get",
        t_boot,
        "/boot/nope/hello.txt",
        None,
    )?;
    api.expect(404, Who::Reader, "get", t_boot, "/boot/n1/no/such", None)?;
    // boot.ipxe is made from the image's kernel, which this one lacks.
    api.expect(503, Who::Reader, "get", t_boot, "/boot/n1/boot.ipxe", None)?;
    api.expect(404, Who::Reader, "head", t_boot, "/boot/n1/no/such", None)?;

    // --- Every operation was called, and answered a documented 2xx.
    let coverage = spec.coverage();
    let mut unseen = Vec::new();
    for ((method, path), statuses) in &coverage {
        ensure!(
            statuses
                .iter()
                .any(|&(s, seen)| seen && (200..300).contains(&s)),
            "{method} {path} was never answered with success: {statuses:?}"
        );
        for (s, seen) in statuses {
            if !seen {
                unseen.push(format!("{} {path} {s}", method.to_uppercase()));
            }
        }
    }
    eprintln!(
        "openapi: {} operations, {} calls checked in {:.1} s; documented but not provoked: {}",
        coverage.len(),
        api.calls.get(),
        started.elapsed().as_secs_f64(),
        unseen.join(", ")
    );
    srv.stop()?;
    Ok(())
}
