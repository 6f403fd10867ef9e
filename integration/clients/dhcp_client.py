#!/usr/bin/env python3
"""A scripted DHCP client for lazyboot's integration tests (stdlib only).

It plays a boot ROM: a UDP socket on 0.0.0.0:68 (or --src-port) bound to
one interface (SO_BINDTODEVICE, SO_BROADCAST), so it works on an interface
that has no address yet. Run it inside the client network namespace.

    dhcp_client.py --iface IF ACTION [options]

ACTION:
  dora      DISCOVER, wait for an OFFER, REQUEST it (server id and address
            from the offer), wait for the ACK/NAK.
            Prints {"offer": REPLY|null, "ack": REPLY|null}.
  discover | request | inform | release | decline
            Send one message, print {"replies": [REPLY...]}: the first
            OFFER/ACK/NAK for our xid, or with --all every reply received
            within --timeout.
  raw       Send each --raw HEX payload as is, then print {"replies": [...]}
            with every BOOTREPLY received within --timeout.

Options are given as CODE=FORMAT:VALUE, FORMAT one of s (text), h (hex),
ip (dotted quad), u8, u16, u32; or all at once as a JSON object with
--opts-json '{"60": "s:PXEClient", "93": "h:0000"}'.

A REPLY is {"op", "msg_type", "xid", "flags", "ciaddr", "yiaddr", "siaddr",
"giaddr", "chaddr", "sname", "file", "options": {"CODE": "hex"}, "from"}.
Repeated options are concatenated (RFC 3396).
"""

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys
import time

MAGIC = bytes([99, 130, 83, 99])
MSG_TYPES = {"discover": 1, "request": 3, "decline": 4, "release": 7, "inform": 8}


def parse_value(text):
    fmt, _, value = text.partition(":")
    if fmt == "s":
        return value.encode()
    if fmt == "h":
        return bytes.fromhex(value)
    if fmt == "ip":
        return ipaddress.IPv4Address(value).packed
    if fmt == "u8":
        return struct.pack("!B", int(value))
    if fmt == "u16":
        return struct.pack("!H", int(value))
    if fmt == "u32":
        return struct.pack("!I", int(value))
    raise SystemExit(f"bad option value {text!r}: use s:, h:, ip:, u8:, u16: or u32:")


def parse_opts(items, json_text):
    opts = {}
    if json_text:
        for code, value in json.loads(json_text).items():
            opts[int(code)] = parse_value(value)
    for item in items or []:
        code, _, value = item.partition("=")
        opts[int(code)] = parse_value(value)
    return opts


def interface_mac(iface):
    with open(f"/sys/class/net/{iface}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def build(msg_type, xid, mac, ciaddr, broadcast, opts):
    flags = 0x8000 if broadcast else 0
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 0, xid, 0, flags,
        ipaddress.IPv4Address(ciaddr).packed,
        bytes(4), bytes(4), bytes(4),
        mac.ljust(16, b"\0"), bytes(64), bytes(128),
    )
    out = bytearray(header + MAGIC)
    out += bytes([53, 1, msg_type])
    for code, value in opts.items():
        if code == 53:
            continue
        # Long values are split (RFC 3396), as real clients do.
        chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes([code, len(chunk)]) + chunk
    out.append(255)
    # Like most ROMs, never send less than a BOOTP packet.
    if len(out) < 300:
        out += bytes(300 - len(out))
    return bytes(out)


def parse_reply(data, sender):
    if len(data) < 240 or data[236:240] != MAGIC:
        return None
    op, htype, hlen, _hops, xid, _secs, flags = struct.unpack("!BBBBIHH", data[:12])
    addrs = [str(ipaddress.IPv4Address(data[i:i + 4])) for i in (12, 16, 20, 24)]
    options = {}
    i = 240
    while i < len(data):
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255 or i + 1 >= len(data):
            break
        length = data[i + 1]
        value = data[i + 2:i + 2 + length]
        options[str(code)] = options.get(str(code), "") + value.hex()
        i += 2 + length
    cstr = lambda b: b.split(b"\0", 1)[0].decode(errors="replace")
    msg_type = int(options.get("53", "00")[:2], 16)
    return {
        "op": op,
        "msg_type": msg_type,
        "xid": xid,
        "flags": flags,
        "ciaddr": addrs[0],
        "yiaddr": addrs[1],
        "siaddr": addrs[2],
        "giaddr": addrs[3],
        "chaddr": data[28:28 + min(hlen, 16)].hex(":"),
        "sname": cstr(data[44:108]),
        "file": cstr(data[108:236]),
        "options": options,
        "from": f"{sender[0]}:{sender[1]}",
    }


class Client:
    def __init__(self, args):
        self.args = args
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
        self.sock.bind(("0.0.0.0", args.src_port))
        self.dest = (args.server or "255.255.255.255", args.port)

    def send(self, data):
        self.sock.sendto(data, self.dest)

    def collect(self, xid, stop_on=None, resend=None):
        """Replies for `xid` (any xid if None) until the timeout, or until
        one whose message type is in `stop_on`. `resend` is sent again every
        --retry seconds meanwhile, as a ROM retransmits: a server that is
        still binding its socket gets a second chance."""
        replies = []
        deadline = time.monotonic() + self.args.timeout
        next_send = time.monotonic() + self.args.retry
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return replies
            if resend is not None and now >= next_send:
                self.send(resend)
                next_send = now + self.args.retry
            wait = min(left, next_send - now) if resend is not None else left
            self.sock.settimeout(max(wait, 0.001))
            try:
                data, sender = self.sock.recvfrom(65535)
            except socket.timeout:
                return replies
            reply = parse_reply(data, sender)
            if reply is None or reply["op"] != 2:
                continue
            if xid is not None and reply["xid"] != xid:
                continue
            replies.append(reply)
            if stop_on and reply["msg_type"] in stop_on:
                return replies


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["dora", "raw"] + sorted(MSG_TYPES))
    p.add_argument("--iface", required=True)
    p.add_argument("--mac", help="chaddr (default: the interface's MAC)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--retry", type=float, default=0.5, help="retransmit interval")
    p.add_argument("--server", help="destination address (default broadcast)")
    p.add_argument("--port", type=int, default=67)
    p.add_argument("--src-port", type=int, default=68)
    p.add_argument("--ciaddr", default="0.0.0.0")
    p.add_argument("--requested", help="option 50")
    p.add_argument("--server-id", help="option 54")
    p.add_argument("--no-broadcast-flag", action="store_true")
    p.add_argument("--opt", action="append", help="CODE=FORMAT:VALUE, for every message")
    p.add_argument("--opts-json")
    p.add_argument("--request-opt", action="append", help="CODE=FORMAT:VALUE, dora's REQUEST only")
    p.add_argument("--request-drop", action="append", type=int, default=[],
                   help="option left out of dora's REQUEST (the Pi 4 drops 60)")
    p.add_argument("--raw", action="append", default=[], help="hex payload for `raw`")
    p.add_argument("--all", action="store_true",
                   help="collect replies until the timeout instead of stopping at the first")
    args = p.parse_args()

    mac = bytes.fromhex(args.mac.replace(":", "")) if args.mac else interface_mac(args.iface)
    opts = parse_opts(args.opt, args.opts_json)
    if args.requested:
        opts[50] = ipaddress.IPv4Address(args.requested).packed
    if args.server_id:
        opts[54] = ipaddress.IPv4Address(args.server_id).packed
    broadcast = not args.no_broadcast_flag and args.ciaddr == "0.0.0.0"
    client = Client(args)
    xid = random.getrandbits(32)

    if args.action == "raw":
        for payload in args.raw:
            client.send(bytes.fromhex(payload))
        result = {"replies": client.collect(None)}
    elif args.action == "dora":
        discover = build(1, xid, mac, args.ciaddr, broadcast, opts)
        client.send(discover)
        offers = client.collect(xid, stop_on={2}, resend=discover)
        offer = next((r for r in offers if r["msg_type"] == 2), None)
        ack = None
        if offer:
            req_opts = {k: v for k, v in opts.items() if k not in args.request_drop}
            req_opts.update(parse_opts(args.request_opt, None))
            req_opts[50] = ipaddress.IPv4Address(offer["yiaddr"]).packed
            req_opts[54] = bytes.fromhex(offer["options"]["54"])
            request = build(3, xid, mac, args.ciaddr, broadcast, req_opts)
            client.send(request)
            acks = client.collect(xid, stop_on={5, 6}, resend=request)
            ack = next((r for r in acks if r["msg_type"] in (5, 6)), None)
        result = {"offer": offer, "ack": ack}
    else:
        message = build(MSG_TYPES[args.action], xid, mac, args.ciaddr, broadcast, opts)
        client.send(message)
        stop = None if args.all else {2, 5, 6}
        resend = message if args.action in ("discover", "request", "inform") else None
        result = {"replies": client.collect(xid, stop_on=stop, resend=resend)}
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
