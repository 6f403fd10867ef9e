#!/usr/bin/env python3
"""Write the seed inputs of the fuzz targets into fuzz/seeds/TARGET/.

Seeds are well-formed examples of what each parser meets in real use, so
that libFuzzer starts from inputs that get past the first checks: the DHCP
requests of a PXE ROM, iPXE, U-Boot and a Raspberry Pi; NFS, MOUNT and
portmapper calls as the Linux client, klibc nfsmount and rpcinfo send them;
tar streams in ustar, PAX and GNU format; an eStargz footer and TOC; a
zstd:chunked blob as podman 4.3 writes it; OCI
manifests and indexes; the example configuration; and TFTP packets as a
Raspberry Pi, U-Boot, iPXE, atftp and tftp-hpa send them. Layer index seeds are
real index files: scripts/fuzz adds them from `lazyboot index` of a small
image. Run from anywhere: python3 fuzz/make-seeds.py
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- DHCP -----------------------------------------------------------------

def dhcp(mac, msg_type, options):
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234abcd, 4, 0x8000,
                       b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4,
                       bytes(mac) + b"\0" * 10, b"", b"")
    opts = bytes([53, 1, msg_type])
    for code, value in options:
        opts += bytes([code, len(value)]) + value
    return head + b"\x63\x82\x53\x63" + opts + b"\xff"


PXE = b"PXEClient:Arch:00000:UNDI:002001"
put("dhcp_packet", "pxe-discover", dhcp([0x52, 0x54, 0, 0x12, 0x34, 0x56], 1, [
    (60, PXE), (93, b"\0\0"), (94, b"\x01\x02\x01"), (97, b"\0" + bytes(range(16))),
    (55, bytes([1, 3, 6, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135]))]))
put("dhcp_packet", "efi-discover", dhcp([0x52, 0x54, 0, 0x12, 0x34, 0x57], 1, [
    (60, b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\0\x07")]))
put("dhcp_packet", "ipxe-request", dhcp([0x52, 0x54, 0, 0x12, 0x34, 0x56], 3, [
    (60, PXE), (77, b"iPXE"), (175, b"\x13\x01\x01\x15\x01\x01"), (50, bytes([10, 0, 0, 100])),
    (54, bytes([10, 0, 0, 1]))]))
put("dhcp_packet", "uboot-discover", dhcp([0x6c, 0xcf, 0x39, 0, 0, 1], 1, [
    (60, b"U-Boot.armv8"), (93, b"\0\x0b")]))
put("dhcp_packet", "pi-discover", dhcp([0xdc, 0xa6, 0x32, 1, 2, 3], 1, [
    (60, PXE), (93, b"\0\0"), (97, b"\0" + b"RPi4" + b"\0" * 12)]))
put("dhcp_packet", "proxy-4011-request", dhcp([0x52, 0x54, 0, 0x12, 0x34, 0x56], 3, [
    (60, PXE), (43, b"\x47\x04\x80\x00\x00\x00\xff")]))


# --- ONC RPC: NFS, MOUNT, portmapper ----------------------------------------

def xdr_u32(v):
    return struct.pack("!I", v)


def xdr_opaque(b):
    return xdr_u32(len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


def auth_sys(uid=0, gid=0, gids=(0,)):
    body = xdr_u32(1) + xdr_opaque(b"node") + xdr_u32(uid) + xdr_u32(gid)
    body += xdr_u32(len(gids)) + b"".join(xdr_u32(g) for g in gids)
    return xdr_u32(1) + xdr_opaque(body)


def call(xid, prog, vers, proc, args=b"", cred=None):
    return (xdr_u32(xid) + xdr_u32(0) + xdr_u32(2) + xdr_u32(prog) + xdr_u32(vers) +
            xdr_u32(proc) + (cred if cred is not None else auth_sys()) + xdr_u32(0) +
            xdr_u32(0) + args)


def record(msg, pieces=1):
    out, step = b"", max(1, len(msg) // pieces)
    for i in range(0, len(msg), step):
        part = msg[i:i + step]
        last = i + step >= len(msg)
        out += xdr_u32(len(part) | (0x80000000 if last else 0)) + part
    return out


FH = xdr_opaque(bytes([1, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]) + bytes(range(24)))
NAME = xdr_opaque(b"vmlinuz")
SATTR = xdr_u32(1) + xdr_u32(0o644) + xdr_u32(1) + xdr_u32(0) + xdr_u32(1) + xdr_u32(0) + \
    xdr_u32(1) + struct.pack("!Q", 0) + xdr_u32(1) + xdr_u32(2) + xdr_u32(0)
NFS, MOUNT, PMAP = 100003, 100005, 100000
nfs_calls = {
    "null": (0, b""),
    "getattr": (1, FH),
    "setattr": (2, FH + SATTR + xdr_u32(0)),
    "lookup": (3, FH + NAME),
    "access": (4, FH + xdr_u32(0x3f)),
    "readlink": (5, FH),
    "read": (6, FH + struct.pack("!Q", 4096) + xdr_u32(65536)),
    "write": (7, FH + struct.pack("!Q", 0) + xdr_u32(5) + xdr_u32(2) + xdr_opaque(b"hello")),
    "create": (8, FH + NAME + xdr_u32(1) + SATTR),
    "create-exclusive": (8, FH + NAME + xdr_u32(2) + b"verifier"),
    "mkdir": (9, FH + NAME + SATTR),
    "symlink": (10, FH + NAME + SATTR + xdr_opaque(b"../lib/x")),
    "mknod": (11, FH + NAME + xdr_u32(3) + SATTR + xdr_u32(8) + xdr_u32(1)),
    "remove": (12, FH + NAME),
    "rmdir": (13, FH + NAME),
    "rename": (14, FH + NAME + FH + xdr_opaque(b"other")),
    "link": (15, FH + FH + NAME),
    "readdir": (16, FH + struct.pack("!Q", 0) + b"\0" * 8 + xdr_u32(4096)),
    "readdirplus": (17, FH + struct.pack("!Q", 3) + b"\0" * 8 + xdr_u32(4096) + xdr_u32(65536)),
    "fsstat": (18, FH),
    "fsinfo": (19, FH),
    "pathconf": (20, FH),
    "commit": (21, FH + struct.pack("!Q", 0) + xdr_u32(0)),
}
for name, (proc, args) in nfs_calls.items():
    put("rpc_call", "nfs-" + name, call(7, NFS, 3, proc, args))
put("rpc_call", "mnt", call(8, MOUNT, 3, 1, xdr_opaque(b"/nodes/pc")))
put("rpc_call", "mount-export", call(9, MOUNT, 3, 5))
put("rpc_call", "auth-none", call(10, NFS, 3, 0, b"", cred=xdr_u32(0) + xdr_u32(0)))
put("rpc_records", "two-calls", record(call(1, NFS, 3, 1, FH)) + record(call(2, NFS, 3, 3, FH + NAME)))
put("rpc_records", "fragments", record(call(3, NFS, 3, 6, FH + struct.pack("!Q", 0) + xdr_u32(512)), 3))
put("rpc_records", "mnt", record(call(4, MOUNT, 3, 1, xdr_opaque(b"/nodes/deb"))))

getport = xdr_u32(MOUNT) + xdr_u32(3) + xdr_u32(17) + xdr_u32(0)
put("portmap_call", "v2-null", call(1, PMAP, 2, 0))
put("portmap_call", "v2-getport", call(2, PMAP, 2, 3, getport))
put("portmap_call", "v2-dump", call(3, PMAP, 2, 4))
put("portmap_call", "v2-set", call(4, PMAP, 2, 1, getport))
rpcb = xdr_u32(NFS) + xdr_u32(3) + xdr_opaque(b"tcp") + xdr_opaque(b"") + xdr_opaque(b"")
put("portmap_call", "v3-getaddr", call(5, PMAP, 3, 3, rpcb))
put("portmap_call", "v4-getaddr", call(6, PMAP, 4, 3, rpcb))
put("portmap_call", "v4-getversaddr", call(7, PMAP, 4, 9, rpcb))
put("portmap_call", "v4-dump", call(8, PMAP, 4, 4))
put("portmap_call", "v3-gettime", call(9, PMAP, 3, 6))


# --- tar --------------------------------------------------------------------

def tar_of(fmt, long_names=False, xattrs=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        def add(name, kind=tarfile.REGTYPE, data=b"", **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.mode, ti.mtime = kind, len(data), kw.get("mode", 0o644), 1700000000
            ti.uid, ti.gid = 0, 0
            for k, v in kw.items():
                setattr(ti, k, v)
            if xattrs and fmt == tarfile.PAX_FORMAT:
                ti.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
            t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("./", tarfile.DIRTYPE, mode=0o755)
        add("etc/", tarfile.DIRTYPE, mode=0o755)
        add("etc/hostname", data=b"node\n")
        add("etc/.wh.old", data=b"")
        add("usr/bin/sh", tarfile.SYMTYPE, linkname="busybox")
        add("usr/bin/ln", tarfile.LNKTYPE, linkname="etc/hostname")
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        if long_names:
            add("usr/share/" + "d" * 120 + "/" + "f" * 110, data=b"long")
    return buf.getvalue()


put("tar_entries", "ustar", tar_of(tarfile.USTAR_FORMAT))
put("tar_entries", "pax", tar_of(tarfile.PAX_FORMAT, long_names=True, xattrs=True))
put("tar_entries", "gnu-longname", tar_of(tarfile.GNU_FORMAT, long_names=True))


# --- zstd -------------------------------------------------------------------

def zstd_raw(data):
    """One zstd frame of raw (stored) blocks: no compressor needed."""
    n = len(data)
    if n < 256:
        head = bytes([0x20]) + struct.pack("<B", n)
    elif n < 65536 + 256:
        head = bytes([0x60]) + struct.pack("<H", n - 256)
    else:
        head = bytes([0xA0]) + struct.pack("<I", n)
    out = struct.pack("<I", 0xFD2FB528) + head
    blocks = [data[i:i + (128 << 10)] for i in range(0, n, 128 << 10)] or [b""]
    for i, b in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        out += struct.pack("<I", last | (len(b) << 3))[:3] + b
    return out


def zstd_skippable(payload):
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


zstd_tar = tar_of(tarfile.PAX_FORMAT, long_names=True, xattrs=True)
put("zstd_layer", "one-frame", zstd_raw(zstd_tar))
put("zstd_layer", "frames", zstd_raw(zstd_tar[:700]) + zstd_skippable(b"toc") +
    zstd_raw(zstd_tar[700:]))


# --- zstd:chunked -----------------------------------------------------------
# As podman 4.3 writes it: a frame per tar header run and per file chunk, the
# manifest (zstd in a skippable frame), a 40-byte footer frame.

zc_blob = zstd_raw(b"tar headers")
zc_data = b"hello world\n" * 20
zc_entries = [{"type": "dir", "name": "etc/", "mode": 0o755,
               "modtime": "2022-04-15T05:20:00Z"}]
for name, chunks in (("etc/hostname", [zc_data[:240]]),
                     ("big", [zc_data[:100], zc_data[100:]])):
    whole = b"".join(chunks)
    entry = {"type": "reg", "name": name, "mode": 0o644, "size": len(whole),
             "modtime": "2022-04-15T05:20:00Z",
             "digest": "sha256:" + hashlib.sha256(whole).hexdigest()}
    more = []
    at = 0
    for i, c in enumerate(chunks):
        offset = len(zc_blob)
        zc_blob += zstd_raw(c)
        fields = {"offset": offset, "chunkSize": len(c), "chunkOffset": at,
                  "chunkDigest": "sha256:" + hashlib.sha256(c).hexdigest()}
        if i == 0:
            entry.update(fields if len(chunks) > 1 else {"offset": offset})
        else:
            more.append({"type": "chunk", "name": name, **fields})
        at += len(c)
    entry["endOffset"] = len(zc_blob)
    zc_entries += [entry] + more
    zc_blob += zstd_raw(b"\0" * 512)
zc_json = json.dumps({"version": 1, "entries": zc_entries}).encode()
zc_manifest = zstd_raw(zc_json)
zc_at = len(zc_blob) + 8
zc_blob += zstd_skippable(zc_manifest)
zc_blob += zstd_skippable(struct.pack("<QQQQ", zc_at, len(zc_manifest), len(zc_json), 1) +
                          b"GnUlInUx")
put("zstd_chunked", "podman-4.3", zc_blob)
put("zstd_chunked", "plain-zstd", zstd_raw(zstd_tar))


# --- eStargz ----------------------------------------------------------------

toc = {"version": 1, "entries": [
    {"name": "etc/", "type": "dir", "mode": 0o755, "modtime": "2023-11-14T22:13:20Z"},
    {"name": "etc/hostname", "type": "reg", "size": 5, "offset": 0, "mode": 0o644,
     "chunkDigest": "sha256:" + "ab" * 32, "digest": "sha256:" + "ab" * 32},
    {"name": "usr/bin/sh", "type": "symlink", "linkName": "busybox"},
    {"name": "usr/bin/ln", "type": "hardlink", "linkName": "etc/hostname"},
]}
toc_tar = io.BytesIO()
with tarfile.open(fileobj=toc_tar, mode="w", format=tarfile.USTAR_FORMAT) as t:
    body = json.dumps(toc).encode()
    ti = tarfile.TarInfo("stargz.index.json")
    ti.size = len(body)
    t.addfile(ti, io.BytesIO(body))
put("estargz", "toc", gzip.compress(toc_tar.getvalue()))
# The footer: an empty gzip member whose extra field says where the TOC is.
extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % 4096
footer = (b"\x1f\x8b\x08\x04" + b"\0" * 4 + b"\0\xff" + struct.pack("<H", len(extra)) + extra +
          b"\x01\x00\x00\xff\xff" + b"\0" * 8)
put("estargz", "footer", footer)


# --- OCI manifests ----------------------------------------------------------

layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
         "digest": "sha256:" + "11" * 32, "size": 1234,
         "annotations": {"containerd.io/snapshot/stargz/toc.digest": "sha256:" + "22" * 32}}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + "33" * 32, "size": 100},
            "layers": [layer]}
put("oci_manifest", "manifest", json.dumps(manifest).encode())
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + "44" * 32, "size": 500,
                        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                       {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + "55" * 32, "size": 500,
                        "platform": {"architecture": "unknown", "os": "unknown"},
                        "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}]}
put("oci_manifest", "index", json.dumps(index).encode())
docker = dict(manifest, mediaType="application/vnd.docker.distribution.manifest.v2+json")
put("oci_manifest", "docker-v2", json.dumps(docker).encode())
put("oci_manifest", "docker-list", json.dumps(dict(
    index, mediaType="application/vnd.docker.distribution.manifest.list.v2+json")).encode())

# --- TFTP -------------------------------------------------------------------

def tftp_request(opcode, name, mode=b"octet", options=()):
    pkt = struct.pack("!H", opcode) + name + b"\0" + mode + b"\0"
    for k, v in options:
        pkt += k + b"\0" + v + b"\0"
    return pkt


put("tftp_packet", "pi-probe-rrq", tftp_request(1, b"8b07bcc6/start4.elf", options=[
    (b"tsize", b"0"), (b"blksize", b"1024")]))
put("tftp_packet", "uboot-rrq", tftp_request(1, b"boot.scr.uimg", options=[
    (b"timeout", b"5"), (b"blksize", b"1468"), (b"tsize", b"0")]))
put("tftp_packet", "ipxe-rrq", tftp_request(1, b"boot.ipxe", options=[
    (b"blksize", b"1432"), (b"tsize", b"0")]))
put("tftp_packet", "atftp-windowsize-rrq", tftp_request(1, b"kernel8.img", options=[
    (b"blksize", b"1468"), (b"windowsize", b"16"), (b"tsize", b"0")]))
put("tftp_packet", "hpa-netascii-rrq", tftp_request(1, b"pxelinux.cfg/default", b"netascii"))
put("tftp_packet", "wrq", tftp_request(2, b"upload.bin", options=[(b"tsize", b"1000")]))
put("tftp_packet", "ack", struct.pack("!HH", 4, 1))
put("tftp_packet", "ack-rollover", struct.pack("!HH", 4, 0))
put("tftp_packet", "error-early-terminate", struct.pack("!HH", 5, 0) + b"Early terminate\0")
put("tftp_packet", "error-unknown-tid", struct.pack("!HH", 5, 5) + b"Unknown transfer ID\0")
put("tftp_packet", "oack", struct.pack("!H", 6) + b"tsize\0002228224\0blksize\0001024\0")
put("tftp_packet", "data", struct.pack("!HH", 3, 7) + bytes(range(256)) * 2)

# --- configuration ----------------------------------------------------------

with open(os.path.join(HERE, "..", "contrib", "lazyboot.example.toml"), "rb") as f:
    put("config_file", "example.toml", f.read())
put("config_file", "small.toml", b'''[server]
interface = "eth0"
address = "10.0.0.1"
[dhcp]
mode = "proxy"
[defaults]
unknown_nodes = "defaults"
image = "registry.lan:5000/os/debian:12"
kind = "ipxe"
[[nodes]]
name = "pi1"
mac = "dc:a6:32:01:02:03"
kind = "raspberrypi"
image = "oci:/srv/images/pi:latest"
root = "ephemeral"
''')
