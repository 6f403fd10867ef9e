//! `render_trace`: Chrome's trace-event JSON, for Perfetto or
//! chrome://tracing.

use super::{fetch_span, pack_lanes};
use crate::profile::model::{BootProfile, Wait};
use serde_json::{json, Value};

/// Trace lanes: one Chrome "thread" per kind, more when spans overlap.
struct Lanes {
    base_tid: u64,
    name: &'static str,
    count: usize,
}

const DHCP_TID: u64 = 1000;
const TFTP_TID: u64 = 2000;
const NFS_TID: u64 = 3000;
const REGISTRY_TID: u64 = 4000;
const PREFETCH_TID: u64 = 5000;

/// Microseconds, as trace events count.
fn us(ms: f64) -> f64 {
    if ms.is_finite() {
        (ms * 1000.0 * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn complete(name: &str, cat: &str, tid: u64, start_ms: f64, end_ms: f64, args: Value) -> Value {
    json!({
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": 1,
        "tid": tid,
        "ts": us(start_ms),
        "dur": us((end_ms - start_ms).max(0.0)),
        "args": args,
    })
}

fn wait_args(w: &Wait) -> Value {
    json!({
        "registry_wait_ms": w.registry_ms,
        "fetched_bytes": w.fetched_bytes,
        "cache_bytes": w.cache_bytes,
        "fetches": w.fetches,
    })
}

/// Chrome trace-event JSON (object form) for Perfetto or chrome://tracing:
/// one process for the node, a thread per kind (DHCP, TFTP, NFS, registry,
/// prefetch; extra threads where spans of a kind overlap), complete events
/// for every span and instants for the NFS mounts and "booted".
pub(crate) fn render_trace(p: &BootProfile) -> String {
    let mut events: Vec<Value> = Vec::new();
    let mut lanes: Vec<Lanes> = Vec::new();

    let mut dhcp = Lanes {
        base_tid: DHCP_TID,
        name: "DHCP",
        count: 0,
    };
    let spans: Vec<(f64, f64)> = p
        .dhcp
        .iter()
        .map(|d| (d.start_ms, d.end_ms.unwrap_or(d.start_ms)))
        .collect();
    let (at, n) = pack_lanes(&spans);
    dhcp.count = n;
    for ((d, lane), (start, end)) in p.dhcp.iter().zip(at).zip(spans) {
        events.push(complete(
            &format!("DHCP {}", d.messages.join(" ")),
            "dhcp",
            DHCP_TID + lane as u64,
            start,
            end,
            json!({ "messages": d.messages, "address": d.address, "client": d.client,
                    "acked": d.end_ms.is_some() }),
        ));
    }
    lanes.push(dhcp);

    let spans: Vec<(f64, f64)> = p.tftp.iter().map(|t| (t.start_ms, t.end_ms)).collect();
    let (at, n) = pack_lanes(&spans);
    for ((t, lane), (start, end)) in p.tftp.iter().zip(at).zip(spans) {
        let mut args = wait_args(&t.wait);
        args["size"] = json!(t.size);
        args["bytes"] = json!(t.bytes);
        args["outcome"] = serde_json::to_value(t.outcome).unwrap_or(Value::Null);
        args["retries"] = json!(t.retries);
        args["generated"] = json!(t.generated);
        events.push(complete(
            &t.file,
            "tftp",
            TFTP_TID + lane as u64,
            start,
            end,
            args,
        ));
    }
    lanes.push(Lanes {
        base_tid: TFTP_TID,
        name: "TFTP",
        count: n,
    });

    let spans: Vec<(f64, f64)> = p
        .nfs_files
        .iter()
        .map(|f| (f.first_ms, f.last_ms))
        .collect();
    let (at, n) = pack_lanes(&spans);
    for ((f, lane), (start, end)) in p.nfs_files.iter().zip(at).zip(spans) {
        let mut args = wait_args(&f.wait);
        args["bytes_read"] = json!(f.bytes_read);
        args["busy_ms"] = json!(f.busy_ms);
        args["ops"] = json!(f.ops);
        events.push(complete(
            &f.path,
            "nfs",
            NFS_TID + lane as u64,
            start,
            end,
            args,
        ));
    }
    for m in &p.nfs_mounts {
        events.push(json!({
            "name": "NFS mount", "cat": "nfs", "ph": "i", "s": "t",
            "pid": 1, "tid": NFS_TID, "ts": us(m.at_ms),
            "args": { "export": m.export, "client": m.client },
        }));
    }
    lanes.push(Lanes {
        base_tid: NFS_TID,
        name: "NFS",
        // The mount instant sits on the first NFS thread even without files.
        count: n.max(usize::from(!p.nfs_mounts.is_empty())),
    });

    let spans: Vec<(f64, f64)> = p.fetches.iter().map(fetch_span).collect();
    let (at, n) = pack_lanes(&spans);
    for ((f, lane), (start, end)) in p.fetches.iter().zip(at).zip(spans) {
        events.push(complete(
            &format!("fetch {}", f.layer),
            "registry",
            REGISTRY_TID + lane as u64,
            start,
            end,
            json!({ "id": f.id, "layer": f.layer, "by": f.by, "bytes": f.bytes,
                    "compressed_bytes": f.compressed_bytes }),
        ));
    }
    lanes.push(Lanes {
        base_tid: REGISTRY_TID,
        name: "registry",
        count: n,
    });

    if let Some(r) = &p.prefetch {
        let end = r
            .end_ms
            .unwrap_or_else(|| p.last_event_ms())
            .max(r.start_ms);
        events.push(complete(
            "prefetch",
            "prefetch",
            PREFETCH_TID,
            r.start_ms,
            end,
            json!({ "planned_chunks": r.planned_chunks, "fetched_chunks": r.fetched_chunks,
                    "learned_from": r.learned_from, "finished": r.end_ms.is_some() }),
        ));
        lanes.push(Lanes {
            base_tid: PREFETCH_TID,
            name: "prefetch",
            count: 1,
        });
    }

    if let Some(b) = &p.booted {
        events.push(json!({
            "name": "booted", "cat": "boot", "ph": "i", "s": "g",
            "pid": 1, "tid": DHCP_TID, "ts": us(b.at_ms),
            "args": { "how": b.how.describe() },
        }));
    }

    let mut meta = vec![json!({
        "name": "process_name", "ph": "M", "pid": 1, "tid": 0,
        "args": { "name": format!("{} boot {}", p.node, p.boot) },
    })];
    for l in &lanes {
        for i in 0..l.count {
            let tid = l.base_tid + i as u64;
            let name = if i == 0 {
                l.name.to_string()
            } else {
                format!("{} ({})", l.name, i + 1)
            };
            meta.push(json!({
                "name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                "args": { "name": name },
            }));
            meta.push(json!({
                "name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid,
                "args": { "sort_index": tid },
            }));
        }
    }
    meta.extend(events);

    let doc = json!({
        "traceEvents": meta,
        "displayTimeUnit": "ms",
        "otherData": {
            "node": p.node,
            "boot": p.boot,
            "image": p.image,
            "manifest": p.manifest,
            "started_unix_ms": p.started_unix_ms,
            "summary": p.summary(),
        },
    });
    serde_json::to_string(&doc).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::report::tests::sample;

    fn events(trace: &str) -> Vec<Value> {
        let doc: Value = serde_json::from_str(trace).expect("trace is JSON");
        assert_eq!(doc["displayTimeUnit"], "ms");
        doc["traceEvents"].as_array().expect("traceEvents").clone()
    }

    #[test]
    fn trace_parses_with_the_expected_events() {
        let ev = events(&render_trace(&sample()));
        let by_ph = |ph: &str| ev.iter().filter(|e| e["ph"] == ph).collect::<Vec<_>>();
        // 1 DHCP + 3 TFTP + 4 NFS files + 5 fetches + 1 prefetch.
        assert_eq!(by_ph("X").len(), 14);
        // NFS mount and booted.
        assert_eq!(by_ph("i").len(), 2);
        // Threads: DHCP, TFTP, NFS x2 (init and libc overlap), registry x3,
        // prefetch = 8, each named and sorted, plus the process name.
        assert_eq!(by_ph("M").len(), 1 + 2 * 8);
        assert_eq!(ev.len(), 33);

        for e in by_ph("X") {
            for key in ["name", "ts", "dur", "pid", "tid"] {
                assert!(!e[key].is_null(), "{key} missing in {e}");
            }
            assert!(e["ts"].is_number() && e["dur"].is_number(), "{e}");
            assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
            assert!(e["dur"].as_f64().unwrap() >= 0.0, "{e}");
        }
        let find = |name: &str| {
            ev.iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("no event {name}"))
        };
        let kernel = find("kernel8.img");
        assert_eq!(kernel["ts"].as_f64(), Some(1_600_000.0));
        assert_eq!(kernel["dur"].as_f64(), Some(1_400_000.0));
        assert_eq!(kernel["tid"], TFTP_TID);
        assert_eq!(kernel["args"]["registry_wait_ms"].as_f64(), Some(900.0));
        assert_eq!(kernel["args"]["outcome"], "complete");
        let libc = find("/usr/lib/libc.so.6");
        assert_eq!(libc["tid"], NFS_TID + 1);
        assert_eq!(libc["dur"].as_f64(), Some(1_800_000.0));
        let booted = find("booted");
        assert_eq!(
            (booted["ph"].as_str(), booted["ts"].as_f64()),
            (Some("i"), Some(12e6))
        );
        let prefetch = find("prefetch");
        assert_eq!(prefetch["dur"].as_f64(), Some(4_600_000.0));
        assert_eq!(find("process_name")["args"]["name"], "cm4-1 boot 3");

        let thread_names: Vec<&str> = ev
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            thread_names,
            [
                "DHCP",
                "TFTP",
                "NFS",
                "NFS (2)",
                "registry",
                "registry (2)",
                "registry (3)",
                "prefetch"
            ]
        );
        // Every thread an event uses is named.
        let named: Vec<&Value> = ev
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| &e["tid"])
            .collect();
        for e in ev.iter().filter(|e| e["ph"] != "M") {
            assert!(named.contains(&&e["tid"]), "unnamed thread in {e}");
        }
    }

    #[test]
    fn trace_x_events_on_one_thread_never_overlap() {
        let ev = events(&render_trace(&sample()));
        let mut xs: Vec<(u64, f64, f64)> = ev
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                (
                    e["tid"].as_u64().unwrap(),
                    ts,
                    ts + e["dur"].as_f64().unwrap(),
                )
            })
            .collect();
        xs.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for w in xs.windows(2) {
            if w[0].0 == w[1].0 {
                assert!(w[0].2 <= w[1].1, "{:?} overlaps {:?}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn trace_of_an_empty_profile_is_valid() {
        let ev = events(&render_trace(&BootProfile::default()));
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["ph"], "M");
    }
}
