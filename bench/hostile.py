#!/usr/bin/env python3
"""Attacks a herald binary as an unauthenticated client would and reports what the server
held: its peak and settled RSS under control-packet floods, and how many trickling
connections it kept, and for how long.

    bench/hostile.py [--quick] PATH/TO/herald [PATH/TO/another-herald ...]

Each binary runs with --dev-auth on a free loopback port and its own data directory.
Standard library only. Every attack is bounded in size and time and stops by itself.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

QUICK = "--quick" in sys.argv
BINARIES = [a for a in sys.argv[1:] if not a.startswith("--")]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    def __init__(self, binary, env):
        self.data = tempfile.TemporaryDirectory()
        e = dict(os.environ, HERALD_LOG="error", **env)
        self.proc = subprocess.Popen(
            [binary, "serve", "--dev-auth", "--listen", "127.0.0.1:0",
             "--data-dir", self.data.name + "/d"],
            env=e, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        host, port = line.removeprefix("listening on ").rsplit(":", 1)
        self.addr = (host, int(port))
        self.pid = self.proc.pid

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.data.cleanup()


class Peak:
    """Samples RSS every 20 ms while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, rss_kib(pid), False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def request(addr, raw, timeout=10):
    s = socket.create_connection(addr, timeout=timeout)
    try:
        s.sendall(raw)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n")
                          if l.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
        return out
    except OSError:
        return b""
    finally:
        s.close()


def healthz(addr):
    try:
        return request(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       timeout=3).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def masked(opcode, payload):
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else \
        (bytes(x ^ y for x, y in zip(payload, mask * (n // 4 + 1))))
    return head + mask + body


def websocket(addr):
    s = socket.create_connection(addr)
    s.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
              b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    s.recv(4096)
    return s


def send_patiently(s, data, patience=3.0):
    """Sends unless the peer stops taking bytes for `patience` seconds."""
    s.settimeout(patience)
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def settled(pid, base, wait=10):
    """RSS once it has stopped falling (or after `wait` seconds)."""
    last, end = rss_kib(pid), time.time() + wait
    while time.time() < end:
        time.sleep(0.5)
        now = rss_kib(pid)
        if now >= last:
            break
        last = now
    return rss_kib(pid)


def flood_polling(srv):
    head = request(srv.addr, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"
                   b"Connection: close\r\n\r\n")
    sid = json.loads(head.split(b"\r\n\r\n", 1)[1][1:])["sid"]
    body = "\x1e".join(["2"] * 333_000).encode()
    for _ in range(5 if QUICK else 20):
        request(srv.addr, b"POST /socket.io/?EIO=4&transport=polling&sid=" + sid.encode() +
                b" HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: " +
                str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    return "20 bodies of 333,000 pings, never polled"


def flood_engine_pings(srv):
    s = websocket(srv.addr)
    frame = masked(1, b"2" + b"p" * 999_000)
    sent = 0
    for _ in range(40 if QUICK else 400):
        if not send_patiently(s, frame):
            break
        sent += 1
    s.close()
    return f"Engine.IO pings of 999 KB, never read: {sent} of {40 if QUICK else 400} frames taken"


def flood_rfc_pings(srv):
    s = websocket(srv.addr)
    batch = masked(9, b"p" * 125) * 1_000
    sent = 0
    for _ in range(100 if QUICK else 1_000):
        if not send_patiently(s, batch):
            break
        sent += 1_000
    s.close()
    return f"RFC 6455 pings of 125 bytes, never read: {sent:,} of {100_000 if QUICK else 1_000_000:,} taken"


def attack_memory(binary, name, attack):
    srv = Server(binary, {})
    try:
        time.sleep(0.3)
        base = rss_kib(srv.pid)
        peak = Peak(srv.pid)
        what = attack(srv)
        ok = healthz(srv.addr)
        top = peak.done()
        after = settled(srv.pid, base)
        return {"attack": name, "what": what, "rss_before_mib": round(base / 1024, 1),
                "rss_peak_mib": round(top / 1024, 1), "rss_after_mib": round(after / 1024, 1),
                "healthz_during": ok}
    finally:
        srv.close()


def slowloris(binary):
    n, secs = 150, (12 if QUICK else 40)
    srv = Server(binary, {"HERALD_TRANSPORT_MAX_CONNECTIONS": str(n)})
    try:
        base_fds = fds(srv.pid)
        socks = []
        for _ in range(n):
            s = socket.create_connection(srv.addr)
            s.setblocking(False)
            socks.append(s)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"a" * 200 + b"\r\n\r\n"
        start, samples, i = time.time(), {}, 0
        healthy = []
        while time.time() - start < secs:
            for s in list(socks):
                try:
                    s.send(head[i % len(head):i % len(head) + 1])
                except OSError:
                    socks.remove(s)
                    s.close()
            i += 1
            t = int(time.time() - start)
            if t in (5, 15, secs - 1) and t not in samples:
                samples[t] = fds(srv.pid) - base_fds
                healthy.append(healthz(srv.addr))
            time.sleep(1)
        for s in socks:
            s.close()
        return {"attack": "slowloris", "what": f"{n} connections sending a head at a byte a second, "
                f"max_connections {n}", "held_after_s": samples, "healthz_ok": healthy}
    finally:
        srv.close()


def main():
    if not BINARIES:
        sys.exit(__doc__)
    for b in BINARIES:
        print(f"== {b}", flush=True)
        for name, attack in [("polling pings", flood_polling),
                             ("websocket engine.io pings", flood_engine_pings),
                             ("websocket rfc 6455 pings", flood_rfc_pings)]:
            print(json.dumps(attack_memory(b, name, attack)), flush=True)
        print(json.dumps(slowloris(b)), flush=True)


if __name__ == "__main__":
    main()
