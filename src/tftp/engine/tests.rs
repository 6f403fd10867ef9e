//! The engine against a raw client on the loopback, with files in memory
//! and short timeouts.

use super::options::Caps;
use super::packet::{encode, parse, Mode, Packet, Refusal, Request};
use super::*;
use crate::tftp::reader::{Label, Via};
use bytes::Bytes;
use std::net::UdpSocket as StdSocket;
use std::time::Instant;

struct Memory(HashMap<String, Bytes>);

impl Open for Memory {
    fn open(
        &self,
        client: SocketAddr,
        path: &str,
    ) -> impl Future<Output = Result<TftpReader, Refusal>> + Send {
        let found = self.0.get(path).cloned();
        let label = Label {
            client,
            via: Via::Tftp,
            node: "-".into(),
            path: path.into(),
        };
        async move {
            found
                .map(|data| TftpReader::memory(label, data))
                .ok_or_else(Refusal::not_found)
        }
    }
}

const RTO: Duration = Duration::from_millis(100);

fn settings(max_sessions: usize, per_client: usize) -> Settings {
    Settings {
        caps: Caps {
            block_size: 1468,
            window_size: 64,
        },
        retransmit_timeout: RTO,
        max_retransmit_timeout: Duration::from_millis(200),
        max_retries: 2,
        max_sessions,
        max_sessions_per_client: per_client,
    }
}

fn file(len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

struct Server {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine<Memory>>,
    addr: SocketAddr,
}

fn server(files: &[(&str, Bytes)], s: Settings) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let files = files.iter().map(|(k, v)| (k.to_string(), v.clone()));
    let engine = Engine::new(
        Arc::new(Memory(files.collect())),
        s,
        IpAddr::from([127, 0, 0, 1]),
    );
    let socket = rt
        .block_on(UdpSocket::bind("127.0.0.1:0"))
        .expect("binding the listener");
    let addr = socket.local_addr().unwrap();
    rt.spawn(engine.clone().serve(socket));
    Server { rt, engine, addr }
}

impl Server {
    /// Wait until no transfer is live (they end by themselves).
    fn drained(&self, within: Duration) -> bool {
        let _rt = self.rt.enter();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.engine.sessions() == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

fn client() -> StdSocket {
    let s = StdSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    s
}

fn rrq(s: &StdSocket, to: SocketAddr, name: &str, options: &[(&str, &str)]) {
    let p = Packet::Rrq(Request {
        filename: name,
        mode: Mode::Octet,
        options: options.to_vec(),
    });
    s.send_to(&encode(&p), to).unwrap();
}

/// The next packet, as an owned (opcode-ish) summary, or None on timeout.
#[derive(Debug, PartialEq)]
enum Got {
    Data(u16, Vec<u8>),
    Oack(Vec<(String, String)>),
    Error(u16, String),
    Other,
}

fn recv(s: &StdSocket, wait: Duration) -> Option<(Got, SocketAddr)> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 70000];
    let (len, from) = s.recv_from(&mut buf).ok()?;
    let got = match parse(&buf[..len]) {
        Ok(Packet::Data { block, data }) => Got::Data(block, data.to_vec()),
        Ok(Packet::Oack(o)) => Got::Oack(
            o.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        Ok(Packet::Error { code, message }) => Got::Error(code, message),
        _ => Got::Other,
    };
    Some((got, from))
}

fn ack(s: &StdSocket, to: SocketAddr, block: u16) {
    s.send_to(&encode(&Packet::Ack(block)), to).unwrap();
}

/// Download `name` in lock-step or windows; returns the bytes.
fn download(srv: &Server, name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let s = client();
    rrq(&s, srv.addr, name, options);
    let mut window = 1u16;
    let mut blksize = 512usize;
    let mut out = Vec::new();
    let mut expect = 1u16;
    let mut in_window = 0;
    loop {
        let (got, from) = recv(&s, Duration::from_secs(2)).expect("an answer");
        match got {
            Got::Oack(o) => {
                for (k, v) in o {
                    match k.as_str() {
                        "blksize" => blksize = v.parse().unwrap(),
                        "windowsize" => window = v.parse().unwrap(),
                        _ => {}
                    }
                }
                ack(&s, from, 0);
            }
            Got::Data(block, data) => {
                assert_eq!(block, expect, "blocks arrive in order on the loopback");
                let last = data.len() < blksize;
                out.extend_from_slice(&data);
                expect = expect.wrapping_add(1);
                in_window += 1;
                if last || in_window == window {
                    ack(&s, from, block);
                    in_window = 0;
                }
                if last {
                    return out;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn files_come_whole_with_and_without_options() {
    let f = file(100_000);
    let exact = file(1468 * 3);
    let srv = server(
        &[("f", f.clone()), ("exact", exact.clone())],
        settings(16, 8),
    );
    assert_eq!(download(&srv, "f", &[]), f);
    assert_eq!(
        download(&srv, "f", &[("blksize", "1468"), ("tsize", "0")]),
        f
    );
    assert_eq!(
        download(&srv, "f", &[("blksize", "9000"), ("windowsize", "16")]),
        f
    );
    assert_eq!(
        download(&srv, "exact", &[("blksize", "1468"), ("windowsize", "3")]),
        exact
    );
    // Unknown options only: no OACK, DATA 1 at once.
    let s = client();
    rrq(&s, srv.addr, "f", &[("multicast", ""), ("windowsize", "0")]);
    let (got, _) = recv(&s, Duration::from_secs(1)).unwrap();
    assert!(
        matches!(got, Got::Data(1, ref d) if d.len() == 512),
        "{got:?}"
    );
    // Not there: error 1, from the transfer's own port.
    let s = client();
    rrq(&s, srv.addr, "nope", &[]);
    let (got, from) = recv(&s, Duration::from_secs(1)).unwrap();
    assert_eq!(got, Got::Error(1, "File not found".into()));
    assert_ne!(from, srv.addr);
    // A write: access violation.
    let p = Packet::Wrq(Request {
        filename: "f",
        mode: Mode::Octet,
        options: vec![],
    });
    s.send_to(&encode(&p), srv.addr).unwrap();
    let (got, _) = recv(&s, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, Got::Error(2, _)), "{got:?}");
}

#[test]
fn block_numbers_roll_over() {
    let f = file(8 * 70_000 + 5);
    let srv = server(&[("big", f.clone())], settings(16, 8));
    let got = download(&srv, "big", &[("blksize", "8"), ("windowsize", "64")]);
    assert!(got == f, "rolled-over transfer differs");
}

#[test]
fn an_error_after_the_oack_ends_the_transfer() {
    let srv = server(&[("f", file(10_000))], settings(16, 8));
    let s = client();
    rrq(&s, srv.addr, "f", &[("tsize", "0"), ("blksize", "1024")]);
    let (got, from) = recv(&s, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, Got::Oack(_)), "{got:?}");
    s.send_to(&super::packet::error(0, "Early terminate"), from)
        .unwrap();
    assert!(
        recv(&s, RTO * 3).is_none(),
        "the server went on after the client's ERROR"
    );
    assert!(srv.drained(Duration::from_millis(100)));
}

#[test]
fn duplicate_acks_get_no_resend_and_a_window_resumes_after_a_loss() {
    let f = file(512 * 40);
    let srv = server(&[("f", f.clone())], settings(16, 8));
    // Lock-step: ACK 1 three times, one DATA 2.
    let s = client();
    rrq(&s, srv.addr, "f", &[]);
    let (got, from) = recv(&s, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, Got::Data(1, _)));
    for _ in 0..3 {
        ack(&s, from, 1);
    }
    let (got, _) = recv(&s, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, Got::Data(2, _)), "{got:?}");
    // Well within the retransmission timeout: nothing more.
    assert_eq!(recv(&s, RTO / 2), None);
    s.send_to(&super::packet::error(0, "done"), from).unwrap();

    // Window of 4: blocks 1-4, "lose" 3 by acknowledging 2: 3-6 follow.
    let s = client();
    rrq(&s, srv.addr, "f", &[("windowsize", "4")]);
    let (got, from) = recv(&s, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, Got::Oack(_)));
    ack(&s, from, 0);
    let blocks = |n| {
        (0..n)
            .map(|_| match recv(&s, RTO / 2) {
                Some((Got::Data(b, _), _)) => b,
                other => panic!("{other:?}"),
            })
            .collect::<Vec<u16>>()
    };
    assert_eq!(blocks(4), [1, 2, 3, 4]);
    ack(&s, from, 2);
    ack(&s, from, 2);
    assert_eq!(blocks(4), [3, 4, 5, 6]);
    assert_eq!(recv(&s, RTO / 2), None, "a duplicate ACK was answered");
}

#[test]
fn silence_is_retransmitted_with_backoff_then_abandoned() {
    let srv = server(&[("f", file(2000))], settings(16, 8));
    let s = client();
    let t0 = Instant::now();
    rrq(&s, srv.addr, "f", &[]);
    let mut at = Vec::new();
    while let Some((got, _)) = recv(&s, Duration::from_secs(1)) {
        assert!(matches!(got, Got::Data(1, _)), "{got:?}");
        at.push(t0.elapsed());
    }
    // The first send and max_retries retransmissions, 100 then 200 ms
    // apart (doubled, then capped at 200).
    assert_eq!(at.len(), 3, "{at:?}");
    assert!(at[1] >= Duration::from_millis(90), "{at:?}");
    assert!(at[2] - at[1] >= Duration::from_millis(190), "{at:?}");
    assert!(srv.drained(Duration::from_millis(500)));
}

#[test]
fn limits_answer_server_busy_and_keep_nothing() {
    let srv = server(&[("f", file(5000))], settings(3, 2));
    let open = |n: usize| {
        (0..n)
            .map(|_| {
                let s = client();
                rrq(&s, srv.addr, "f", &[]);
                let got = recv(&s, Duration::from_secs(1)).unwrap();
                (s, got)
            })
            .collect::<Vec<_>>()
    };
    let first = open(3);
    assert!(matches!(first[0].1 .0, Got::Data(1, _)));
    assert!(matches!(first[1].1 .0, Got::Data(1, _)));
    // The third from the same address: over the per-client limit.
    assert_eq!(first[2].1 .0, Got::Error(0, BUSY.into()));
    assert_eq!(
        first[2].1 .1, srv.addr,
        "busy comes from the listening port"
    );
    assert_eq!(srv.engine.sessions(), 2);
    // Another address (127.0.0.2) gets one more, then the global limit.
    let other = |_| {
        let s = StdSocket::bind("127.0.0.2:0").unwrap();
        rrq(&s, srv.addr, "f", &[]);
        recv(&s, Duration::from_secs(1)).unwrap().0
    };
    assert!(matches!(other(0), Got::Data(1, _)));
    assert_eq!(other(1), Got::Error(0, BUSY.into()));
    // Once transfers end, there is room again.
    for (s, (_, from)) in &first[..2] {
        s.send_to(&super::packet::error(0, "bye"), from).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(download(&srv, "f", &[]).len(), 5000);
}

#[test]
fn a_repeated_request_is_one_transfer_until_the_client_moves_on() {
    let f = file(3000);
    let srv = server(&[("f", f.clone())], settings(16, 8));
    let s = client();
    rrq(&s, srv.addr, "f", &[("tsize", "0")]);
    rrq(&s, srv.addr, "f", &[("tsize", "0")]);
    let (got, from) = recv(&s, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, Got::Oack(_)));
    // The repeat made no second transfer (no second OACK before the
    // first's retransmission, which comes from the same port).
    match recv(&s, RTO * 3 / 2) {
        Some((Got::Oack(_), again)) => assert_eq!(again, from),
        other => panic!("{other:?}"),
    }
    assert_eq!(srv.engine.sessions(), 1);
    // The Pi's way: ERROR to the probe, the same request again from the
    // same port, and this time the whole file.
    s.send_to(&super::packet::error(0, "Early terminate"), from)
        .unwrap();
    rrq(&s, srv.addr, "f", &[]);
    let mut out = Vec::new();
    loop {
        match recv(&s, Duration::from_secs(1)).unwrap() {
            (Got::Data(b, d), new) => {
                assert_ne!(new, from, "the new transfer has a new port");
                out.extend_from_slice(&d);
                ack(&s, new, b);
                if d.len() < 512 {
                    break;
                }
            }
            // The old transfer may have resent before it read the ERROR.
            (Got::Oack(_), old) => assert_eq!(old, from),
            other => panic!("{other:?}"),
        }
    }
    assert!(out == f);
    assert!(srv.drained(Duration::from_millis(500)));
}

#[test]
fn a_late_copy_of_the_request_leaves_a_transfer_in_progress_alone() {
    let f = file(5000);
    let srv = server(&[("f", f.clone())], settings(16, 8));
    let s = client();
    rrq(&s, srv.addr, "f", &[]);
    let mut out = Vec::new();
    let mut port = None;
    loop {
        let (got, from) = recv(&s, Duration::from_secs(1)).expect("the next block");
        let Got::Data(block, data) = got else {
            panic!("{got:?}")
        };
        // The transfer stays on its first port: the copy started nothing.
        assert_eq!(*port.get_or_insert(from), from, "block {block}");
        assert_eq!(block as usize, out.len() / 512 + 1);
        out.extend_from_slice(&data);
        ack(&s, from, block);
        if block == 1 {
            // A copy of the request the client sent while the server was
            // slow to answer, arriving after the client acknowledged.
            rrq(&s, srv.addr, "f", &[]);
        }
        if data.len() < 512 {
            break;
        }
    }
    assert!(out == f);
    assert_eq!(recv(&s, RTO * 3), None, "nothing more after the last block");
    assert!(srv.drained(Duration::from_millis(500)));
}

#[test]
fn a_client_that_went_quiet_and_asks_again_starts_over() {
    let f = file(3000);
    let srv = server(&[("f", f.clone())], settings(16, 8));
    let s = client();
    rrq(&s, srv.addr, "f", &[]);
    let (got, first) = recv(&s, Duration::from_secs(1)).unwrap();
    assert_eq!(got, Got::Data(1, f[..512].to_vec()));
    ack(&s, first, 1);
    // The client drops the transfer without a word, then asks again.
    std::thread::sleep(RTO * 2);
    rrq(&s, srv.addr, "f", &[]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        assert!(Instant::now() < deadline, "no new transfer");
        match recv(&s, Duration::from_secs(1)) {
            Some((Got::Data(1, d), from)) if from != first => {
                assert_eq!(d, f[..512]);
                break;
            }
            // The old transfer's retransmissions, until it is dropped.
            Some((Got::Data(2, _), from)) => assert_eq!(from, first),
            other => panic!("{other:?}"),
        }
    }
}
