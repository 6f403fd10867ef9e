#!/usr/bin/env python3
"""A small TFTP client for lazyboot's integration tests (RFC 1350, 2347,
2348, 2349, 7440), able to misbehave the way real boot ROMs do.

Every command prints one JSON object on stdout.

  get HOST PORT FILE [--bind IP] [--opt NAME=VALUE ...] [--out PATH]
      Download FILE. Reports the OACK options, the size and sha256 of the
      data, the number of DATA packets, or the ERROR code and message.

  probe HOST PORT FILE [--bind IP] [--same-port]
      What a Raspberry Pi's bootloader does: RRQ with "tsize 0" and
      "blksize 1024", read the OACK, answer with ERROR 0 "Early terminate",
      then request the file again from a new port (or the same one with
      --same-port) and download it. Reports the probe's tsize and the
      download's result.

  raw HOST PORT HEX [--bind IP] [--wait SECS]
      Send one datagram (hex) to the server port; report what comes back
      within --wait seconds (or nothing).

  put HOST PORT FILE [--bind IP]
      A write request; reports the server's answer.

  abort-after-oack HOST PORT FILE [--bind IP] [--listen SECS]
      RRQ with "tsize 0" and "blksize 1024", ERROR 0 "Early terminate" in
      answer to the OACK, then count what the server still sends within
      --listen seconds.

  dup-acks HOST PORT FILE [--bind IP] [--listen SECS]
      Lock-step RRQ without options; ACK block 1 three times, then list the
      DATA blocks that come within --listen seconds.

  window-loss HOST PORT FILE [--bind IP] [--listen SECS]
      RRQ with "windowsize 4" and "blksize 512": take blocks 1-4, ACK 2 as
      if block 3 were lost, list the DATA blocks within --listen seconds.

  silent HOST PORT FILE [--bind IP] [--listen SECS]
      RRQ with "tsize 0", then never answer: report when each packet came
      (seconds after the request) within --listen seconds.

  hold HOST PORT FILE --from IP:N[:FILE] [--from ...]
      Start N transfers from IP (of FILE, if given), each from a new port,
      one after the other, all kept open: report each one's first reply.
      Ends them with ERROR.

  flood HOST PORT FILE --bind IP --count N [--rate PER_SEC] [--hold SECS]
      N RRQs from N ports, --rate a second (a burst beyond the server
      socket's receive buffer is lost, as UDP is), never acknowledged; the
      ports stay open for --hold seconds after the last one. Reports the first reply of each
      (DATA, busy ERROR, other, none) and how long sending took.
"""

import argparse
import hashlib
import json
import resource
import select
import socket
import struct
import sys
import time

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


def rrq(filename, opts, opcode=RRQ):
    pkt = struct.pack("!H", opcode) + filename.encode() + b"\0octet\0"
    for k, v in opts:
        pkt += k.encode() + b"\0" + str(v).encode() + b"\0"
    return pkt


def parse_oack(body):
    parts = body.split(b"\0")
    opts = {}
    for i in range(0, len(parts) - 1, 2):
        if parts[i]:
            opts[parts[i].decode().lower()] = parts[i + 1].decode()
    return opts


def new_socket(bind, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind or "0.0.0.0", 0))
    s.settimeout(timeout)
    return s


def recv_from_server(s, host, tid):
    """Next packet from the server (port `tid` once known)."""
    while True:
        data, addr = s.recvfrom(70000)
        if addr[0] != host:
            continue
        if tid is not None and addr[1] != tid:
            # RFC 1350: a packet from another TID gets an error, transfer goes on.
            s.sendto(struct.pack("!HH", ERROR, 5) + b"Unknown transfer ID\0", addr)
            continue
        return data, addr


def download(s, host, port, filename, opts, out=None, retries=5):
    """Run one read transfer on socket `s`. Returns a result dict."""
    req = rrq(filename, opts)
    wanted = dict((k.lower(), str(v)) for k, v in opts)
    result = {"file": filename, "oack": None, "error": None}
    blksize, window = 512, 1
    tid = None
    expected = 1
    received_in_window = 0
    digest = hashlib.sha256()
    size = 0
    packets = 0
    sink = open(out, "wb") if out else None
    s.sendto(req, (host, port))
    last_sent = (req, (host, port))
    timeouts = 0
    while True:
        try:
            data, addr = recv_from_server(s, host, tid)
        except socket.timeout:
            timeouts += 1
            if timeouts > retries:
                result["error"] = [-1, "timeout"]
                break
            s.sendto(*last_sent)
            continue
        timeouts = 0
        if tid is None:
            tid = addr[1]
        (op,) = struct.unpack("!H", data[:2])
        if op == ERROR:
            code, = struct.unpack("!H", data[2:4])
            result["error"] = [code, data[4:].split(b"\0")[0].decode(errors="replace")]
            break
        if op == OACK:
            o = parse_oack(data[2:])
            result["oack"] = o
            for k in o:
                if k not in wanted:
                    result["unrequested_option"] = k
            blksize = int(o.get("blksize", 512))
            window = int(o.get("windowsize", 1))
            ack = struct.pack("!HH", ACK, 0)
            s.sendto(ack, addr)
            last_sent = (ack, addr)
            continue
        if op != DATA:
            continue
        (block,) = struct.unpack("!H", data[2:4])
        payload = data[4:]
        if block != (expected & 0xFFFF):
            # Out of order or a retransmission: ack what we have.
            ack = struct.pack("!HH", ACK, (expected - 1) & 0xFFFF)
            s.sendto(ack, addr)
            last_sent = (ack, addr)
            received_in_window = 0
            continue
        packets += 1
        digest.update(payload)
        size += len(payload)
        if sink:
            sink.write(payload)
        expected += 1
        received_in_window += 1
        last = len(payload) < blksize
        if last or received_in_window >= window:
            ack = struct.pack("!HH", ACK, block)
            s.sendto(ack, addr)
            last_sent = (ack, addr)
            received_in_window = 0
        if last:
            break
    if sink:
        sink.close()
    if result["error"] is None:
        result.update(size=size, sha256=digest.hexdigest(), packets=packets, blksize=blksize)
    return result


def parse_opts(items):
    out = []
    for item in items or []:
        k, _, v = item.partition("=")
        out.append((k, v))
    return out


def cmd_get(a):
    s = new_socket(a.bind, a.timeout)
    return download(s, a.host, a.port, a.file, parse_opts(a.opt), a.out)


def cmd_probe(a):
    s = new_socket(a.bind, a.timeout)
    s.sendto(rrq(a.file, [("tsize", 0), ("blksize", 1024)]), (a.host, a.port))
    data, addr = recv_from_server(s, a.host, None)
    (op,) = struct.unpack("!H", data[:2])
    if op != OACK:
        return {"probe_error": data[4:].split(b"\0")[0].decode(errors="replace")}
    probe = parse_oack(data[2:])
    s.sendto(struct.pack("!HH", ERROR, 0) + b"Early terminate\0", addr)
    if not a.same_port:
        s.close()
        s = new_socket(a.bind, a.timeout)
    result = download(s, a.host, a.port, a.file, [("tsize", 0), ("blksize", 1024)])
    result["probe_oack"] = probe
    return result


def cmd_raw(a):
    s = new_socket(a.bind, a.wait)
    s.sendto(bytes.fromhex(a.hex), (a.host, a.port))
    try:
        data, addr = s.recvfrom(70000)
    except socket.timeout:
        return {"reply": None}
    (op,) = struct.unpack("!H", data[:2]) if len(data) >= 2 else (None,)
    reply = {"opcode": op, "hex": data[:64].hex()}
    if op == ERROR:
        reply["code"] = struct.unpack("!H", data[2:4])[0]
        reply["message"] = data[4:].split(b"\0")[0].decode(errors="replace")
    if op == OACK:
        reply["oack"] = parse_oack(data[2:])
        # Do not leave the transfer hanging: abort it.
        s.sendto(struct.pack("!HH", ERROR, 0) + b"done\0", addr)
    if op == DATA:
        s.sendto(struct.pack("!HH", ERROR, 0) + b"done\0", addr)
    return {"reply": reply}


def cmd_put(a):
    s = new_socket(a.bind, a.timeout)
    s.sendto(rrq(a.file, [], opcode=WRQ), (a.host, a.port))
    try:
        data, _ = recv_from_server(s, a.host, None)
    except socket.timeout:
        return {"reply": None}
    (op,) = struct.unpack("!H", data[:2])
    reply = {"opcode": op}
    if op == ERROR:
        reply["code"] = struct.unpack("!H", data[2:4])[0]
        reply["message"] = data[4:].split(b"\0")[0].decode(errors="replace")
    return {"reply": reply}


def packets_within(s, secs):
    """Every datagram on `s` within `secs` seconds: [(opcode, block or code, addr)]."""
    out = []
    deadline = time.monotonic() + secs
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(70000)
        except socket.timeout:
            return out
        if len(data) >= 4:
            out.append(list(struct.unpack("!HH", data[:4])) + [addr[1]])


def end(s, addr):
    s.sendto(struct.pack("!HH", ERROR, 0) + b"done\0", addr)


def first_reply(s, host):
    data, addr = recv_from_server(s, host, None)
    (op,) = struct.unpack("!H", data[:2])
    return data, addr, op


def cmd_abort_after_oack(a):
    s = new_socket(a.bind, a.timeout)
    s.sendto(rrq(a.file, [("tsize", 0), ("blksize", 1024)]), (a.host, a.port))
    data, addr, op = first_reply(s, a.host)
    if op != OACK:
        return {"oack": None, "opcode": op}
    s.sendto(struct.pack("!HH", ERROR, 0) + b"Early terminate\0", addr)
    t0 = time.monotonic()
    after = packets_within(s, a.listen)
    return {"oack": parse_oack(data[2:]), "after_error": after,
            "listened": round(time.monotonic() - t0, 3)}


def cmd_dup_acks(a):
    s = new_socket(a.bind, a.timeout)
    s.sendto(rrq(a.file, []), (a.host, a.port))
    data, addr, op = first_reply(s, a.host)
    if op != DATA:
        return {"opcode": op}
    block1 = struct.unpack("!H", data[2:4])[0]
    for _ in range(3):
        s.sendto(struct.pack("!HH", ACK, 1), addr)
    after = packets_within(s, a.listen)
    end(s, addr)
    return {"first": block1, "data_after": [b for op, b, _ in after if op == DATA],
            "other_after": [p for p in after if p[0] != DATA]}


def cmd_window_loss(a):
    s = new_socket(a.bind, a.timeout)
    s.sendto(rrq(a.file, [("windowsize", 4), ("blksize", 512)]), (a.host, a.port))
    data, addr, op = first_reply(s, a.host)
    if op != OACK:
        return {"opcode": op}
    oack = parse_oack(data[2:])
    s.sendto(struct.pack("!HH", ACK, 0), addr)
    first = []
    s.settimeout(a.timeout)
    while len(first) < 4:
        try:
            data, _ = s.recvfrom(70000)
        except socket.timeout:
            break
        if struct.unpack("!H", data[:2])[0] == DATA:
            first.append(struct.unpack("!H", data[2:4])[0])
    s.sendto(struct.pack("!HH", ACK, 2), addr)
    after = packets_within(s, a.listen)
    end(s, addr)
    return {"oack": oack, "first": first, "after": [b for op, b, _ in after if op == DATA]}


def cmd_silent(a):
    s = new_socket(a.bind, a.timeout)
    t0 = time.monotonic()
    s.sendto(rrq(a.file, [("tsize", 0)]), (a.host, a.port))
    arrivals = []
    deadline = t0 + a.listen
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(70000)
        except socket.timeout:
            break
        arrivals.append([struct.unpack("!H", data[:2])[0], round(time.monotonic() - t0, 3)])
    if arrivals:
        end(s, addr)
    return {"arrivals": arrivals}


def raise_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))


def classify(data):
    if data is None:
        return ["none", None, None]
    (op,) = struct.unpack("!H", data[:2])
    if op == ERROR:
        return ["error", struct.unpack("!H", data[2:4])[0],
                data[4:].split(b"\0")[0].decode(errors="replace")]
    return [{DATA: "data", OACK: "oack"}.get(op, "other"), None, None]


def cmd_hold(a):
    open_ = []
    replies = []
    specs = [(spec.split(":", 2) + [a.file])[:3] for spec in a.source]
    raise_fd_limit(sum(int(n) for _, n, _ in specs))
    for ip, n, file in specs:
        for _ in range(int(n)):
            s = new_socket(ip, a.timeout)
            s.sendto(rrq(file, []), (a.host, a.port))
            try:
                data, addr = recv_from_server(s, a.host, None)
            except socket.timeout:
                data, addr = None, None
            replies.append([ip] + classify(data))
            open_.append((s, addr, data))
    for s, addr, data in open_:
        if data is not None and struct.unpack("!H", data[:2])[0] != ERROR:
            end(s, addr)
        s.close()
    return {"replies": replies}


def cmd_flood(a):
    raise_fd_limit(a.count)
    socks = []
    t0 = time.monotonic()
    for i in range(a.count):
        pause = t0 + i / a.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((a.bind, 0))
        s.setblocking(False)
        s.sendto(rrq(a.file, []), (a.host, a.port))
        socks.append(s)
    sent = time.monotonic() - t0
    time.sleep(a.hold)
    counts = {}
    for s in socks:
        try:
            data = s.recv(70000)
        except BlockingIOError:
            data = None
        kind = classify(data)
        key = kind[0] if kind[0] != "error" else "error %s %s" % (kind[1], kind[2])
        counts[key] = counts.get(key, 0) + 1
        s.close()
    return {"sent": a.count, "send_secs": round(sent, 3), "first_replies": counts}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("get", "probe", "raw", "put", "abort-after-oack", "dup-acks", "window-loss",
                 "silent", "hold", "flood"):
        c = sub.add_parser(name)
        c.add_argument("host")
        c.add_argument("port", type=int)
        c.add_argument("hex" if name == "raw" else "file")
        c.add_argument("--bind")
        c.add_argument("--timeout", type=float, default=2.0)
        if name in ("abort-after-oack", "dup-acks", "window-loss", "silent"):
            c.add_argument("--listen", type=float, default=1.5)
        if name == "hold":
            c.add_argument("--from", dest="source", action="append", required=True)
        if name == "flood":
            c.add_argument("--count", type=int, required=True)
            c.add_argument("--hold", type=float, default=5.0)
            c.add_argument("--rate", type=float, default=1000.0)
        if name == "get":
            c.add_argument("--opt", action="append")
            c.add_argument("--out")
        if name == "probe":
            c.add_argument("--same-port", action="store_true")
        if name == "raw":
            c.add_argument("--wait", type=float, default=1.0)
    a = p.parse_args()
    result = {"get": cmd_get, "probe": cmd_probe, "raw": cmd_raw, "put": cmd_put,
              "abort-after-oack": cmd_abort_after_oack, "dup-acks": cmd_dup_acks,
              "window-loss": cmd_window_loss, "silent": cmd_silent, "hold": cmd_hold,
              "flood": cmd_flood}[a.cmd](a)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
