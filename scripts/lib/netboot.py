#!/usr/bin/env python3
"""Helpers for scripts/demo and scripts/bench-boot (no third-party modules).

    netboot.py ra IFACE
        IPv6 router advertisements on IFACE every 500 ms until killed: router
        lifetime 0, no prefix ("no IPv6 router here"). Without one, iPXE
        waits ~16 s for IPv6 autoconfiguration before it runs its script.

    netboot.py boot --console FILE --marker TEXT [--timeout S] [--show all|milestones|none]
                    [--result FILE] [--attempts N] [--counter NS/IFACE/rx|tx] -- COMMAND...
        Starts COMMAND (QEMU) with stdout in FILE, follows FILE, prints guest
        lines as they come (all of them, only milestones, or none), and exits
        0 as soon as TEXT shows up, 1 when the guest fails, QEMU exits early
        or the timeout passes. With --attempts N, a guest whose PXE ROM gives
        up ("No bootable device") is started again, up to N starts in all,
        the clock still running from the first. --result gets a JSON object:
        seconds from the first start to the marker and to each milestone,
        the number of starts, and the --counter interface byte counter read
        when the marker showed. After the marker QEMU gets 20 s to power
        off, then it is killed.

    netboot.py report CASES.jsonl OUT_DIR
        The bench table (scripts/bench-boot): reads one JSON object per case,
        computes the ratios, prints the table and writes OUT_DIR/results.md
        and OUT_DIR/results.json.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][A-Za-z0-9]|[=>78cDEHM])")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# Boot milestones: (name, pattern) in the order they happen.
MILESTONES = [
    ("ipxe", "iPXE"),
    ("kernel", "Linux version"),
    ("initramfs", "lazyboot-initramfs: start"),
    ("dhcp", "lazyboot-initramfs: address"),
    ("nfs_mounted", "lazyboot-initramfs: mounted"),
    ("init", "lazyboot-root:"),
]
FATAL = ["No bootable device", "Kernel panic", "lazyboot-initramfs: FAIL"]


def clean(line):
    return CONTROL.sub("", ANSI.sub("", line)).rstrip()


def router_adverts(iface):
    index = socket.if_nametoindex(iface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    # Type 134, code 0, checksum (filled in by the kernel), hop limit 64, no
    # flags, router lifetime 0, reachable time 0, retransmission timer 0.
    advert = bytes([134, 0, 0, 0, 64, 0, 0, 0]) + bytes(8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            sock.sendto(advert, ("ff02::1", 0, 0, index))
        except OSError:
            pass  # no link-local address yet (no carrier): try again
        time.sleep(0.5)


def link_counter(spec):
    """NS/IFACE/STAT (e.g. ns1/vreg/tx): that interface's byte counter."""
    ns, iface, stat = spec.split("/")
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", iface],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["stats64"][stat]["bytes"]


def boot(args):
    opts = {"--timeout": "300", "--show": "milestones", "--result": None,
            "--attempts": "1", "--counter": None}
    console = marker = None
    i = 0
    while i < len(args) and args[i] != "--":
        key = args[i]
        if i + 1 >= len(args):
            sys.exit(f"netboot.py boot: {key} needs a value")
        if key == "--console":
            console = args[i + 1]
        elif key == "--marker":
            marker = args[i + 1]
        elif key in opts:
            opts[key] = args[i + 1]
        else:
            sys.exit(f"netboot.py boot: unknown option {key}")
        i += 2
    command = args[i + 1:]
    if not console or not marker or not command:
        sys.exit("usage: netboot.py boot --console FILE --marker TEXT [...] -- COMMAND...")
    timeout = float(opts["--timeout"])
    attempts = int(opts["--attempts"])
    show = opts["--show"]

    out = open(console, "wb")
    err = open(console + ".stderr", "wb")
    started = time.monotonic()
    child = None

    def stop(*_):
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    seen = {}
    pos = 0
    partial = b""
    outcome = None
    text_tail = []
    starts = 0
    counter = None
    while outcome is None:
        starts += 1
        if starts > 1:
            msg = f"power cycle: start {starts} of at most {attempts}"
            print(f"  guest {time.monotonic() - started:6.1f}s | ({msg})", flush=True)
            out.write(f"\n--- netboot.py: {msg} ---\n".encode())
            out.flush()
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        retry = False
        while outcome is None:
            now = time.monotonic() - started
            with open(console, "rb") as f:
                f.seek(pos)
                data = f.read()
            pos += len(data)
            partial += data
            *lines, partial = re.split(rb"\r?\n", partial)
            # A marker may sit in a line not ended yet.
            for raw in lines + ([partial] if marker.encode() in partial else []):
                line = clean(raw.decode("utf-8", "replace"))
                if not line:
                    continue
                text_tail = (text_tail + [line])[-60:]
                new = [n for n, p in MILESTONES if n not in seen and p in line]
                for n in new:
                    seen[n] = round(now, 2)
                if show == "all":
                    print(f"  guest {now:6.1f}s | {line}", flush=True)
                elif show == "milestones" and (new or "LAZYBOOT" in line):
                    short = line if len(line) <= 110 else line[:107] + "..."
                    print(f"  guest {now:6.1f}s | {short}", flush=True)
                if marker in line:
                    seen["marker"] = round(now, 2)
                    if opts["--counter"]:
                        counter = link_counter(opts["--counter"])
                    outcome = "marker"
                    break
                fatal = next((f for f in FATAL if f in line), None)
                if fatal == "No bootable device" and starts < attempts and now < timeout:
                    # The PXE ROM gave up (its TFTP request timed out): power
                    # the machine off and on again, as its BMC would.
                    retry = True
                    break
                if fatal:
                    outcome = f"the guest failed: {fatal!r}"
                    break
            if outcome or retry:
                break
            if child.poll() is not None:
                outcome = f"QEMU exited ({child.returncode}) before the marker"
            elif now > timeout:
                outcome = f"no marker after {timeout:.0f} s"
            else:
                time.sleep(0.05)
        if retry:
            child.kill()
            child.wait()
            partial = b""

    # The guest powers off right after the marker: give it a moment.
    try:
        child.wait(20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if opts["--result"]:
        with open(opts["--result"], "w") as f:
            json.dump({"seconds": seen.get("marker"), "milestones": seen, "outcome": outcome,
                       "qemu_starts": starts, "counter_at_marker": counter}, f)
    if outcome != "marker":
        print(f"netboot.py: {outcome}", file=sys.stderr)
        print("--- console (last 30 lines) ---", file=sys.stderr)
        print("\n".join(text_tail[-30:]), file=sys.stderr)
        try:
            with open(console + ".stderr", "rb") as f:
                e = f.read().decode("utf-8", "replace").strip()
            if e:
                print("--- qemu stderr ---\n" + e[-2000:], file=sys.stderr)
        except OSError:
            pass
        sys.exit(1)


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def report(cases_file, out_dir):
    with open(cases_file) as f:
        cases = [json.loads(l) for l in f if l.strip()]
    meta_path = os.path.join(out_dir, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    rate = meta.get("link_bytes_per_s", 12.5e6)
    formats = []
    for c in cases:
        if c["format"] not in formats:
            formats.append(c["format"])
    rows = []
    for fmt in formats:
        mine = {c["case"]: c for c in cases if c["format"] == fmt}
        base = mine.get("a", {}).get("seconds")
        warm = mine.get("e", {})
        # The limit: a warm boot plus the bytes the boot read at link speed.
        limit = None
        if warm.get("seconds") is not None and warm.get("boot_bytes") is not None:
            limit = warm["seconds"] + warm["boot_bytes"] / rate
        for c in cases:
            if c["format"] != fmt:
                continue
            s = c.get("seconds")
            c["vs_baseline"] = round(base / s, 2) if s and base else None
            c["vs_limit"] = round(s / limit, 2) if s and limit else None
            c["limit_seconds"] = round(limit, 2) if limit else None
            rows.append(c)
    goals = []
    for fmt in formats:
        mine = {c["case"]: c for c in rows if c["format"] == fmt}
        a, cc, d = mine.get("a"), mine.get("c"), mine.get("d")
        if a and cc and a.get("seconds") and cc.get("seconds"):
            x = a["seconds"] / cc["seconds"]
            goals.append(f"{fmt}: (c) is {x:.1f}x faster than (a) (goal >= 5x): {'met' if x >= 5 else 'NOT met'}")
        else:
            goals.append(f"{fmt}: (c) vs (a): not measured")
        if d and d.get("vs_limit"):
            v = d["vs_limit"]
            goals.append(f"{fmt}: (d) is {v:.2f}x the limit (goal <= 1.3x): {'met' if v <= 1.3 else 'NOT met'}")
        else:
            goals.append(f"{fmt}: (d) vs the limit: not measured")

    head = ["format", "case", "what", "s QEMU start to marker", "registry bytes to marker",
            "boot read", "speed-up vs (a)", "x the limit", "note"]
    table = []
    for c in rows:
        table.append([
            c["format"], c["case"], c.get("what", ""),
            f"{c['seconds']:.1f}" if c.get("seconds") is not None
            else ("skipped" if c.get("note", "").startswith("skipped") else "FAILED"),
            f"{c['registry_bytes']:,} ({fmt_bytes(c['registry_bytes'])})" if c.get("registry_bytes") is not None else "-",
            fmt_bytes(c.get("boot_bytes")),
            f"{c['vs_baseline']:.1f}x" if c.get("vs_baseline") else "-",
            f"{c['vs_limit']:.2f}" if c.get("vs_limit") else "-",
            c.get("note", ""),
        ])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    limits = []
    for fmt in formats:
        c = next((c for c in rows if c["format"] == fmt and c.get("limit_seconds")), None)
        if c:
            warm = next(w for w in rows if w["format"] == fmt and w["case"] == "e")
            limits.append(f"{fmt}: limit = warm boot {warm['seconds']:.1f} s + {warm['boot_bytes']:,} bytes read "
                          f"/ {rate / 1e6:.1f} MB/s = {c['limit_seconds']:.1f} s")
    text = []
    if meta:
        text.append(f"Image: {meta.get('image_desc', '')}")
        text.append(f"Link: {meta.get('rate', '')} (tbf on the registry's veth); machine: {meta.get('machine', '')}")
        text.append("")
    text += md + [""] + limits + [""] + goals
    doc = "\n".join(text) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("# scripts/bench-boot results\n\n" + doc)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "cases": rows, "goals": goals}, f, indent=2)
    print(doc)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ra" and len(args) == 1:
        router_adverts(args[0])
    elif cmd == "boot":
        boot(args)
    elif cmd == "report" and len(args) == 2:
        report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
