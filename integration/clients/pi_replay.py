#!/usr/bin/env python3
"""Replay a Raspberry Pi 4 / CM4 (or, with --model 5, a Pi 5 / CM5) network
boot (stdlib only), as its boot EEPROM does it: DHCP with the Pi's options,
then every TFTP request of the firmware in the order a real boot makes them
(see ../shared/seeds/003_*.txt: tsize probes answered with ERROR 0 "Early
terminate", "file not found" lookups, repeated requests; `sequence5` for
the Pi 5).

Run it inside the client network namespace, as root:

    pi_replay.py --iface IF --tftp-port PORT [--prefix 8b07bcc6] [--no-request]
                 [--model 5 --serial 8b07bcc6]

It takes the interface's MAC as chaddr. After DHCP it puts the offered (or
acknowledged) address on the interface, as the firmware uses it, and sends
every TFTP request from it to siaddr. `--prefix ''` plays TFTP_PREFIX=0
(no serial directory). `--no-request` stops DHCP after the OFFER, as the
Pi 3 ROM in the seed does before its TFTP requests.

Prints one JSON object: {"offer", "ack", "address", "server", "log": [...]},
each log entry {"op": "get"|"probe", "file", "result":
"data"|"not found"|"aborted"|"error", "bytes", "tsize", "sha256",
"blksize", "error", "port"}.
"""

import argparse
import hashlib
import ipaddress
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dhcp_client import Client, build, interface_mac  # noqa: E402

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
BLKSIZE = 1468

# What the Pi 4 bootloader sends (PXE-style): vendor class, client system
# architecture 0 (x86 BIOS: the ROM predates an ARM code), client NDI,
# a client GUID, and the parameter request list with 43, 66 and 67.
PI_OPTS = {
    55: bytes([1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135]),
    60: b"PXEClient:Arch:00000:UNDI:002001",
    93: bytes([0, 0]),
    94: bytes([1, 2, 1]),
    97: bytes.fromhex("00") + bytes.fromhex("34695db0") + bytes(12),
}


def pi5_opts(mac, serial):
    """A Pi 5's DISCOVER options. Raspberry Pi's bootloader configuration
    documentation (DHCP_OPTION97): the GUID is the four-character code
    `RPi5` (0x35695052), the board revision (its example 0x00d04170, a
    Pi 5 Model B), the low 4 bytes of the MAC and the 4-byte serial; the
    firmware-2712 release notes (2023-10-30) give the order of the code's
    bytes, "R,P,i,5", so the words are little-endian. The vendor class is
    the Pi 4's PXE one (rpi-eeprom issue #826 shows a Pi 5 sending
    `PXEClient:Arch:00000:UNDI:002001`), as are 55, 93 and 94."""
    opts = dict(PI_OPTS)
    guid = (b"RPi5" + (0x00d04170).to_bytes(4, "little") + bytes(mac[2:6])
            + int(serial, 16).to_bytes(4, "little"))
    opts[97] = b"\x00" + guid
    return opts


def dhcp(iface, no_request, timeout, opts):
    mac = interface_mac(iface)
    args = types.SimpleNamespace(iface=iface, src_port=68, server=None, port=67,
                                 timeout=timeout, retry=0.5)
    client = Client(args)
    xid = random.getrandbits(32)
    discover = build(1, xid, mac, "0.0.0.0", True, opts)
    client.send(discover)
    offer = next((r for r in client.collect(xid, stop_on={2}, resend=discover)
                  if r["msg_type"] == 2), None)
    if offer is None or no_request:
        return offer, None
    # The Pi 4 leaves option 60 out of its REQUEST.
    opts = {k: v for k, v in opts.items() if k != 60}
    opts[50] = ipaddress.IPv4Address(offer["yiaddr"]).packed
    opts[54] = bytes.fromhex(offer["options"]["54"])
    request = build(3, xid, mac, "0.0.0.0", True, opts)
    client.send(request)
    ack = next((r for r in client.collect(xid, stop_on={5, 6}, resend=request)
                if r["msg_type"] in (5, 6)), None)
    return offer, ack


def rrq(filename):
    return (struct.pack("!H", RRQ) + filename.encode() + b"\0octet\0"
            + b"tsize\0" + b"0\0" + b"blksize\0" + str(BLKSIZE).encode() + b"\0")


def parse_oack(body):
    parts = body.split(b"\0")
    return {parts[i].decode().lower(): parts[i + 1].decode()
            for i in range(0, len(parts) - 1, 2) if parts[i]}


class Tftp:
    def __init__(self, server, port, bind, timeout):
        self.server, self.port, self.bind, self.timeout = server, port, bind, timeout
        # Sockets of aborted probes stay open until the replay ends: an OACK
        # retransmitted just before the server read our "Early terminate"
        # may still arrive, and if the OS gave the same port to a later
        # request, that stale OACK would be taken for the new file's reply.
        self.lingering = []

    def _socket(self):
        # A new source port for every request, as the firmware does.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.bind, 0))
        s.settimeout(self.timeout)
        return s

    def _recv(self, s, tid):
        while True:
            data, addr = s.recvfrom(70000)
            if addr[0] != self.server:
                continue
            if tid is not None and addr[1] != tid:
                s.sendto(struct.pack("!HH", ERROR, 5) + b"Unknown transfer ID\0", addr)
                continue
            return data, addr

    def request(self, filename, probe):
        """`probe`: read the OACK, answer "Early terminate" (the Pi's size
        probe). Otherwise download the whole file."""
        entry = {"op": "probe" if probe else "get", "file": filename}
        s = self._socket()
        entry["port"] = s.getsockname()[1]
        req = rrq(filename)
        s.sendto(req, (self.server, self.port))
        last = (req, (self.server, self.port))
        tid, expected, blksize, size, timeouts = None, 1, 512, 0, 0
        digest = hashlib.sha256()
        small = b""
        try:
            while True:
                try:
                    data, addr = self._recv(s, tid)
                except socket.timeout:
                    timeouts += 1
                    if timeouts > 5:
                        entry.update(result="error", error=[-1, "timeout"])
                        return entry
                    s.sendto(*last)
                    continue
                timeouts = 0
                tid = addr[1]
                (op,) = struct.unpack("!H", data[:2])
                if op == ERROR:
                    (code,) = struct.unpack("!H", data[2:4])
                    msg = data[4:].split(b"\0")[0].decode(errors="replace")
                    entry["error"] = [code, msg]
                    entry["result"] = "not found" if code == 1 else "error"
                    return entry
                if op == OACK:
                    o = parse_oack(data[2:])
                    entry["oack"] = o
                    if "tsize" in o:
                        entry["tsize"] = int(o["tsize"])
                    blksize = int(o.get("blksize", 512))
                    entry["blksize"] = blksize
                    if probe:
                        s.sendto(struct.pack("!HH", ERROR, 0) + b"Early terminate\0", addr)
                        entry["result"] = "aborted"
                        return entry
                    ack = struct.pack("!HH", ACK, 0)
                    s.sendto(ack, addr)
                    last = (ack, addr)
                    continue
                if op != DATA:
                    continue
                (block,) = struct.unpack("!H", data[2:4])
                if block != expected & 0xFFFF:
                    ack = struct.pack("!HH", ACK, (expected - 1) & 0xFFFF)
                    s.sendto(ack, addr)
                    last = (ack, addr)
                    continue
                payload = data[4:]
                if probe:
                    # No OACK (options refused): abort after the first block.
                    s.sendto(struct.pack("!HH", ERROR, 0) + b"Early terminate\0", addr)
                    entry["result"] = "aborted"
                    return entry
                digest.update(payload)
                size += len(payload)
                expected += 1
                ack = struct.pack("!HH", ACK, block)
                s.sendto(ack, addr)
                last = (ack, addr)
                if small is not None:
                    small += payload
                    if len(small) > 4096:
                        small = None
                if len(payload) < blksize:
                    entry.update(result="data", bytes=size, sha256=digest.hexdigest())
                    if small is not None:
                        # Small text files (config.txt, cmdline.txt) as text.
                        entry["text"] = small.decode(errors="replace")
                    return entry
        finally:
            if entry.get("result") == "aborted":
                self.lingering.append(s)
            else:
                s.close()


def sequence(p):
    """The CM4 firmware's requests, modelled on the seed's Pi 3B+ boot with
    the Pi 4 file names (start4.elf, fixup4.dat, bcm2711 device tree). Each
    item: (file, kind), kind "probe" (tsize probe + Early terminate) or
    "get" (a whole transfer or a not-found lookup)."""
    return [
        ("bootsig.bin", "get"),
        (p + "start4.elf", "probe"),
        (p + "autoboot.txt", "get"),
        (p + "start4.elf", "probe"),
        (p + "config.txt", "get"),
        (p + "recovery.elf", "get"),
        (p + "start4.elf", "get"),
        (p + "fixup4.dat", "get"),
        (p + "recovery.elf", "get"),
        (p + "config.txt", "probe"),
        (p + "config.txt", "get"),
        (p + "dt-blob.bin", "get"),
        (p + "recovery.elf", "get"),
        (p + "config.txt", "probe"),
        (p + "config.txt", "get"),
        (p + "bootcfg.txt", "get"),
        (p + "recovery8.img", "get"),
        (p + "kernel8.img", "probe"),
        (p + "kernel8.img", "probe"),
        (p + "initramfs8", "probe"),
        (p + "initramfs8", "probe"),
        (p + "initramfs8", "probe"),
        (p + "initramfs8", "get"),
        (p + "bcm2711-rpi-cm4.dtb", "probe"),
        (p + "bcm2711-rpi-cm4.dtb", "get"),
        (p + "overlays/overlay_map.dtb", "probe"),
        (p + "overlays/overlay_map.dtb", "get"),
        (p + "config.txt", "probe"),
        (p + "config.txt", "get"),
        (p + "overlays/vc4-kms-v3d.dtbo", "probe"),
        (p + "overlays/vc4-kms-v3d.dtbo", "get"),
        (p + "cmdline.txt", "probe"),
        (p + "cmdline.txt", "get"),
        (p + "armstub8.bin", "get"),
        (p + "kernel8.img", "probe"),
        (p + "kernel8.img", "get"),
    ]


def sequence5(p):
    """A Pi 5's requests, from Raspberry Pi's documentation of it: the
    firmware is in the EEPROM, so no start4.elf or fixup4.dat ("EEPROM boot
    flow", differences on Raspberry Pi 5); config.txt is what it looks for
    first, under the prefix (the prefix is kept when config.txt is there;
    a bootable Pi 5 partition is "config.txt and a suitable device-tree",
    bootloader configuration, PARTITION_WALK); with self-update on (the
    default, ENABLE_SELF_UPDATE) it looks for the update's .sig in the boot
    file system; then the device tree it checks the OS with (os_check,
    firmware-2712 release notes 2025-03-27), the overlays config.txt names
    (overlay_prefix "overlays/"), cmdline.txt, the kernel (kernel_2712.img,
    the Pi 5 default, config.txt "kernel" documentation) and the initramfs
    config.txt names. Each file is probed for its size first (tsize, then
    ERROR "Early terminate") and then fetched, as the Pi 4 does."""
    files = ["config.txt", "bcm2712-rpi-5-b.dtb", "overlays/vc4-kms-v3d.dtbo",
             "cmdline.txt", "kernel_2712.img", "initramfs_2712"]
    seq = [(p + "config.txt", "probe"), (p + "config.txt", "get"),
           (p + "pieeprom.sig", "get")]
    for f in files[1:]:
        seq += [(p + f, "probe"), (p + f, "get")]
    return seq


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--tftp-port", type=int, default=69)
    ap.add_argument("--prefix", default="", help="serial directory, e.g. 8b07bcc6")
    ap.add_argument("--no-request", action="store_true")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--pause-after-dhcp", type=float, default=0.0,
                    help="seconds to wait between DHCP and TFTP (lets a prefetch finish)")
    ap.add_argument("--model", type=int, choices=[4, 5], default=4)
    ap.add_argument("--serial", default="8b07bcc6", help="for the Pi 5's option 97")
    a = ap.parse_args()

    opts = pi5_opts(interface_mac(a.iface), a.serial) if a.model == 5 else PI_OPTS
    offer, ack = dhcp(a.iface, a.no_request, a.timeout, opts)
    result = {"offer": offer, "ack": ack, "log": []}
    lease = ack if ack and ack["msg_type"] == 5 else (offer if a.no_request else None)
    if lease is None:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
        sys.exit(2)
    address, server = lease["yiaddr"], lease["siaddr"]
    result.update(address=address, server=server)
    subprocess.run(["ip", "addr", "flush", "dev", a.iface], check=True)
    subprocess.run(["ip", "addr", "add", f"{address}/24", "dev", a.iface], check=True)
    time.sleep(a.pause_after_dhcp)
    tftp = Tftp(server, a.tftp_port, address, a.timeout / 3)
    prefix = a.prefix + "/" if a.prefix else ""
    started = time.monotonic()
    for name, kind in (sequence5 if a.model == 5 else sequence)(prefix):
        entry = tftp.request(name, kind == "probe")
        result["log"].append(entry)
    result["seconds"] = round(time.monotonic() - started, 3)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
