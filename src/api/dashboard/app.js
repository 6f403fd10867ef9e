"use strict";
// The fleet dashboard: polls the read-only API every 2 s and redraws.
// Everything the API returns reaches the DOM through textContent or
// attributes, never as markup: node names and messages are not trusted.

const POLL_MS = 2000;
const STATES = ["up", "booting", "swapping", "pending", "failed", "unknown"];
const ACTIVE_SWAP = ["preparing", "rolling"];
const RECENT_SWAPS = 10;

const $ = (id) => document.getElementById(id);

let selected = null;       // name of the node whose waterfall is shown
let shownBoots = null;     // its boots_recorded when the frame was loaded
let lastNodes = [];        // last good /api/v1/nodes answer
let loaded = false;        // whether there has been one
const details = new Map(); // name -> {key, last_boot} from /api/v1/nodes/NAME

// el("td", {class: "x", "data-node": name}, child, "text", ...)
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

function str(v) {
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  return typeof v === "string" && v !== "" ? v : null;
}

function num(v) {
  return typeof v === "number" && isFinite(v) ? v : null;
}

// The first 12 hex digits of "sha256:...", or null.
function shortDigest(d) {
  const s = str(d);
  if (!s) return null;
  const hex = s.includes(":") ? s.slice(s.indexOf(":") + 1) : s;
  return hex.slice(0, 12);
}

function badge(state) {
  const s = str(state) || "unknown";
  return el("span", { class: "badge " + s.replace(/[^a-z_]/g, ""), "data-state": s }, s);
}

function nodeName(n) {
  return str(n && n.node && n.node.name) || str(n && n.name) || "?";
}

// Newer servers say the state; older ones only booting/failed/boots.
function nodeState(n) {
  const s = str(n.state);
  if (s) return s;
  if (n.failed) return "failed";
  if (n.booting === true) return "booting";
  if ((num(n.boots_recorded) || 0) > 0) return "up";
  return "unknown";
}

function lastBoot(n) {
  if (n.last_boot !== undefined) return n.last_boot;
  const d = details.get(nodeName(n));
  return d ? d.last_boot : null;
}

function bootText(lb) {
  if (!lb || typeof lb !== "object") return null;
  const ms = num(lb.booted_ms);
  const secs = ms === null ? "\u2014" : (ms / 1000).toFixed(1) + " s";
  return secs + (str(lb.result) ? " " + lb.result : "");
}

function accessMessage(status, what) {
  return [
    `Reading ${what} was refused (HTTP ${status}): this browser's address may not ` +
      "read the lazyboot API without the token.",
    "To get access, add this machine's address or network to server.api_readers in " +
      "lazyboot's configuration (loopback and the served network are readers by default), " +
      "or call the API with the token (Authorization: Bearer TOKEN; the token is " +
      "server.api_token, or the api.token file in the server's state directory). " +
      "The dashboard itself sends no token.",
  ];
}

class HttpError extends Error {
  constructor(status, what) {
    super(`${what}: HTTP ${status}`);
    this.status = status;
    this.what = what;
  }
}

async function getJson(path, what) {
  const r = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!r.ok) throw new HttpError(r.status, what);
  return r.json();
}

// The latest boot from the node's own route, for servers whose node list
// has no last_boot; fetched again only when the node's boots change.
async function fillDetails(nodes) {
  const want = nodes.filter(
    (n) => n.last_boot === undefined && (num(n.boots_recorded) || 0) > 0
  );
  await Promise.all(
    want.map(async (n) => {
      const name = nodeName(n);
      const key = `${n.boots_recorded}/${n.booting}`;
      if (details.has(name) && details.get(name).key === key) return;
      try {
        const d = await getJson(`/api/v1/nodes/${encodeURIComponent(name)}`, "node");
        const b = d && d.latest_boot;
        let lb = null;
        if (b && typeof b === "object") {
          const booted = b.booted && typeof b.booted === "object" ? b.booted : null;
          const by = booted && booted.how && booted.how.by;
          lb = {
            boot: num(b.boot),
            booted_ms: booted ? num(booted.at_ms) : null,
            result: booted ? (by === "quiet" ? "quiet" : "booted")
              : n.booting ? "in_progress" : "failed",
            manifest: str(b.manifest),
          };
        }
        details.set(name, { key, last_boot: lb });
      } catch (e) {
        // The row still shows what the list said.
      }
    })
  );
}

function renderCounts(nodes) {
  const counts = new Map();
  for (const n of nodes) {
    const s = nodeState(n);
    counts.set(s, (counts.get(s) || 0) + 1);
  }
  const order = STATES.concat([...counts.keys()].filter((s) => !STATES.includes(s)));
  const box = $("counts");
  box.replaceChildren(
    el("span", { class: "chip total", "data-count": "total" },
      el("span", { class: "n" }, String(nodes.length)), "nodes"),
    ...order
      .filter((s) => counts.get(s))
      .map((s) =>
        el("span", { class: "chip " + s, "data-count": s },
          el("span", { class: "dot" }), el("span", { class: "n" }, String(counts.get(s))), s)
      )
  );
}

function nodeRow(n) {
  const name = nodeName(n);
  const node = n.node && typeof n.node === "object" ? n.node : {};
  const lb = lastBoot(n);
  const digest = str(n.digest) || (lb && str(lb.manifest));
  const image = str(n.assigned) || str(node.image) || "\u2014";
  const address = str(n.address) || str(node.ip);
  const digestCell = el("td", { class: "digest mono", title: digest },
    shortDigest(digest) || "\u2014");
  if (str(n.pending_digest)) {
    digestCell.appendChild(el("span", { class: "dim", title: n.pending_digest },
      " \u2192 " + shortDigest(n.pending_digest)));
  }
  const boots = num(n.boots_recorded);
  const tr = el("tr", { "data-node": name },
    el("td", { class: "name" }, el("strong", null, name)),
    el("td", { class: "kind" }, str(node.kind) || "\u2014"),
    el("td", { class: "group" }, str(n.group) || "\u2014"),
    el("td", { class: "state", title: str(n.failed) }, badge(nodeState(n))),
    el("td", { class: "image mono" }, image),
    digestCell,
    el("td", { class: "address mono", title: str(n.address) ? null : "configured" },
      address || "\u2014"),
    el("td", { class: "boot" }, bootText(lb) || "\u2014"),
    el("td", { class: "boots" }, boots === null ? "\u2014" : String(boots))
  );
  if (name === selected) tr.classList.add("selected");
  tr.addEventListener("click", () => select(name));
  return tr;
}

function renderNodes(nodes) {
  const sorted = nodes.slice().sort((a, b) => nodeName(a).localeCompare(nodeName(b)));
  $("nodes").replaceChildren(...sorted.map(nodeRow));
  $("nodes-empty").style.display = nodes.length ? "none" : "";
}

function swapCard(s, open) {
  const done = num(s.done) || 0;
  const total = num(s.total) || 0;
  const bar = el("div");
  bar.style.width = total > 0 ? Math.min(100, (100 * done) / total) + "%" : "0";
  const digest = shortDigest(s.digest);
  const title = el("span", { class: "title" },
    badge(s.state),
    el("strong", null, str(s.id) || "?"),
    el("span", null, str(s.target) || "?"),
    el("span", null, "\u2192"),
    el("code", null, str(s.image) || "?"),
    digest ? el("code", { class: "dim", title: s.digest }, digest) : null,
    el("span", { class: "dim" }, `${done}/${total}`),
    num(s.started_unix_ms) !== null
      ? el("span", { class: "dim" }, "started " + new Date(s.started_unix_ms).toLocaleTimeString())
      : null
  );
  const list = el("ul");
  for (const n of Array.isArray(s.nodes) ? s.nodes : []) {
    if (!n || typeof n !== "object") continue;
    const from = shortDigest(n.from);
    const to = shortDigest(n.to);
    list.appendChild(el("li", { "data-swap-node": str(n.name) || "?" },
      el("span", null, str(n.name) || "?"),
      badge(n.state),
      from || to ? el("code", { class: "dim" }, `${from || "\u2014"} \u2192 ${to || "\u2014"}`) : null,
      str(n.message) ? el("span", { class: "dim" }, n.message) : null));
  }
  const body = [
    el("div", { class: "progress" }, bar),
    str(s.message) ? el("p", { class: "dim" }, s.message) : null,
    list,
  ];
  if (open) {
    return el("div", { class: "swap", "data-swap": str(s.id) || "" }, title, ...body);
  }
  return el("details", { class: "swap", "data-swap": str(s.id) || "" },
    el("summary", null, title), ...body);
}

function renderSwaps(swaps) {
  const list = swaps.filter((s) => s && typeof s === "object");
  const newest = (a, b) => (num(b.started_unix_ms) || 0) - (num(a.started_unix_ms) || 0);
  const active = list.filter((s) => ACTIVE_SWAP.includes(s.state)).sort(newest);
  const recent = list.filter((s) => !ACTIVE_SWAP.includes(s.state)).sort(newest)
    .slice(0, RECENT_SWAPS);
  $("swaps-active").replaceChildren(
    ...(active.length ? active.map((s) => swapCard(s, true))
      : [el("p", { class: "empty" }, "no swaps")])
  );
  $("swaps-recent").replaceChildren(
    ...(recent.length ? [el("h2", null, "Recent swaps"), ...recent.map((s) => swapCard(s, false))]
      : [])
  );
}

function showNotice(lines) {
  const box = $("notice");
  if (!lines.length) {
    box.classList.remove("shown");
    box.replaceChildren();
    return;
  }
  box.replaceChildren(...lines.map((l) => el("p", null, l)));
  box.classList.add("shown");
}

function problem(e, what) {
  if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
    return accessMessage(e.status, e.what);
  }
  if (e instanceof HttpError) return [`Reading ${what} failed: HTTP ${e.status}.`];
  return [`Cannot reach lazyboot for ${what}: ${e && e.message ? e.message : e}.`];
}

async function loadSwaps() {
  try {
    const d = await getJson("/api/v1/swaps", "swaps");
    return { swaps: Array.isArray(d && d.swaps) ? d.swaps : [], notice: [] };
  } catch (e) {
    // A server without swaps has no such route: nothing to show.
    if (e instanceof HttpError && e.status === 404) return { swaps: [], notice: [] };
    return { swaps: null, notice: problem(e, "swaps") };
  }
}

async function refresh() {
  const notice = [];
  let ok = true;
  const swapsP = loadSwaps();
  try {
    const nodes = await getJson("/api/v1/nodes", "nodes");
    lastNodes = Array.isArray(nodes) ? nodes.filter((n) => n && typeof n === "object") : [];
    loaded = true;
    await fillDetails(lastNodes);
    renderCounts(lastNodes);
    renderNodes(lastNodes);
  } catch (e) {
    ok = false;
    notice.push(...problem(e, "nodes"));
  }
  const sw = await swapsP;
  if (sw.swaps) renderSwaps(sw.swaps);
  // The same access message once, not for each endpoint.
  for (const l of sw.notice) if (!notice.includes(l)) notice.push(l);
  showNotice(notice);
  const up = $("updated");
  up.textContent = (ok ? "updated " : "stale, last try ") + new Date().toLocaleTimeString();
  up.classList.toggle("stale", !ok);
  up.setAttribute("data-refreshed", String(Date.now()));
  if (ok) syncWaterfall();
}

function profileUrl(name) {
  return `/api/v1/nodes/${encodeURIComponent(name)}/profiles/latest?format=html`;
}

function select(name) {
  selected = name;
  shownBoots = null;
  const params = new URLSearchParams(location.hash.slice(1));
  if (name === null) params.delete("node");
  else params.set("node", name);
  const hash = params.toString();
  history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  for (const tr of $("nodes").querySelectorAll("tr[data-node]")) {
    tr.classList.toggle("selected", tr.getAttribute("data-node") === name);
  }
  syncWaterfall();
}

// Shows the selected node's latest boot; reloads it when a boot is added.
function syncWaterfall() {
  const box = $("waterfall");
  const frame = $("profile");
  if (selected === null) {
    box.classList.remove("shown");
    frame.removeAttribute("src");
    return;
  }
  box.classList.add("shown");
  $("waterfall-title").textContent = "Boot waterfall: " + selected;
  const n = lastNodes.find((x) => nodeName(x) === selected);
  const boots = n ? num(n.boots_recorded) : null;
  const none = $("waterfall-none");
  const why = !loaded ? null
    : !n ? "There is no node " + selected + "."
    : boots === 0 ? "No boot of " + selected + " has been recorded yet."
    : null;
  none.textContent = why || "";
  if (why) {
    frame.style.display = "none";
    frame.removeAttribute("src");
    shownBoots = null;
    return;
  }
  frame.style.display = "";
  const url = profileUrl(selected);
  $("waterfall-open").setAttribute("href", url);
  if (frame.getAttribute("src") !== url || (boots !== null && boots !== shownBoots)) {
    frame.setAttribute("src", url);
    shownBoots = boots;
  }
}

function fromHash() {
  const name = new URLSearchParams(location.hash.slice(1)).get("node");
  if (name !== selected) select(name || null);
}

$("waterfall-close").addEventListener("click", () => select(null));
window.addEventListener("hashchange", fromHash);
fromHash();

async function loop() {
  try {
    await refresh();
  } finally {
    setTimeout(loop, POLL_MS);
  }
}
loop();
