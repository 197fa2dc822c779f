"""Hostile and clumsy peers against a real ``secmoe serve`` on 127.0.0.1: issue 15's table.

One server process (the bundled model) meets the attacks below one after another. For each:
did the server survive, what it said (its log line for the session, and the reason the
attacker received in the abort frame), how long after the attacker's last byte the server
dropped the connection, the server's RSS before / at the peak during the attack / after, and
whether a good client (``secmoe infer``, one held-out image, checked against the plaintext
model) was then served correctly.

    python benchmarks/hostile_peers.py [--setup-timeout 5] [--json FILE] [--only NAME ...]

Attacks are plain coroutines in ``ATTACKS`` (name -> coroutine(port) returning what the
attacker saw); session-level ones can be added next to the net-level ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from secmoe.app import APP_PARAMS
from secmoe.model.reference import run
from secmoe.model.weights import load_bundled, load_heldout
from secmoe.net.codec import decode, encode
from secmoe.net.errors import one_line
from secmoe.net.framing import LEN, Frame, FrameDecoder, encode_frame
from secmoe.net.tcp import _hello

SECMOE = [sys.executable, "-m", "secmoe.cli"]
ENDINGS = ("ended", "rejected", "failed", "refused")  # the server's log line for a session
MiB = 1 << 20


def frame(path: str, tag: str, payload: bytes, *, more: bool = False, phase: str = "online"):
    return encode_frame(Frame(path, tag, 1, phase, more, payload))


def hello(params: dict | None = None) -> bytes:
    body = encode(_hello("client", APP_PARAMS if params is None else params, "hostile"))
    return frame("", "hello", body, phase="handshake")


class Probe:
    """A raw connection: writes what an attack says, then reads until the server closes,
    keeping the abort reason (or handshake refusal) it sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()
        self.decoder = FrameDecoder(64 * MiB)
        self.said = ""

    @classmethod
    async def open(cls, port: int, *, handshake: bool = True) -> Probe:
        p = cls(*await asyncio.open_connection("127.0.0.1", port))
        if handshake:
            await p.send(hello())
        return p

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def outcome(self, limit: float = 120.0) -> tuple[str, float]:
        """What the server said, and the seconds from the connection's opening until it
        closed the connection (read meanwhile)."""
        try:
            async with asyncio.timeout(limit):
                while data := await self.reader.read(1 << 20):
                    for f in self.decoder.feed(data):
                        self._note(f)
        except (ConnectionError, TimeoutError):
            pass
        self.writer.close()
        return self.said, time.monotonic() - self.opened

    def _note(self, f: Frame) -> None:
        try:
            value = decode(f.chunk)
        except Exception:
            return
        if f.path == "/" and f.tag == "abort":
            self.said = f"abort: {value}"
        elif f.tag == "hello" and isinstance(value, dict) and value.get("error"):
            self.said = f"refused: {value['error']}"


async def garbage(port: int) -> tuple[str, float]:
    p = await Probe.open(port, handshake=False)
    await p.send(b"GET / HTTP/1.1\r\nHost: secmoe\r\n\r\n")
    return await p.outcome()


async def wrong_handshake(port: int) -> tuple[str, float]:
    p = await Probe.open(port, handshake=False)
    await p.send(hello({"app": "secmoe-infer", "ring": [32, 8]}))
    return await p.outcome()


async def oversized_frame(port: int) -> tuple[str, float]:
    p = await Probe.open(port)
    await p.send(LEN.pack((1 << 32) - 1))
    return await p.outcome()


async def truncated_frame(port: int) -> tuple[str, float]:
    """Half a frame, then silence (the connection stays open)."""
    p = await Probe.open(port)
    await p.send(LEN.pack(1000) + b"\x00\x10" + b"\x00" * 100)
    return await p.outcome()


async def malformed_msgpack(port: int) -> tuple[str, float]:
    p = await Probe.open(port)
    await p.send(frame("", "setup/request", b"\x91" * 5000))
    return await p.outcome()


async def junk_to_many_paths(port: int) -> tuple[str, float]:
    p = await Probe.open(port)
    junk = b"".join(frame(f"junk{i}", "x", b"\x00" * 64) for i in range(100_000))
    with contextlib.suppress(ConnectionError):
        await p.send(junk)
    return await p.outcome()


async def huge_message(port: int) -> tuple[str, float]:
    """Streams a message of up to 8 GiB in 16 MiB frames until the server drops it."""
    p = await Probe.open(port)
    piece = frame("", "setup/request", bytes(16 * MiB), more=True)
    with contextlib.suppress(ConnectionError):
        for _ in range(512):
            await p.send(piece)
    return await p.outcome()


async def silent_peer(port: int) -> tuple[str, float]:
    p = await Probe.open(port)
    return await p.outcome()


async def killed_peer(port: int) -> tuple[str, float]:
    """A client process killed (SIGKILL) in the middle of a frame; the time is from the kill
    to the server's log line (the connection is gone with the process)."""
    code = textwrap.dedent(
        f"""
        import socket, sys, time
        s = socket.create_connection(("127.0.0.1", {port}))
        s.sendall({hello()!r} + {LEN.pack(1000)!r} + b"\\0\\x10")
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    await asyncio.to_thread(proc.stdout.readline)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return "(killed: sees nothing)", -1.0  # measured from the server's log instead


Attack = Callable[[int], Awaitable[tuple[str, float]]]
ATTACKS: dict[str, Attack] = {
    "garbage": garbage,
    "wrong handshake": wrong_handshake,
    "oversized frame": oversized_frame,
    "truncated frame": truncated_frame,
    "malformed msgpack": malformed_msgpack,
    "junk to many paths": junk_to_many_paths,
    "huge message": huge_message,
    "silent peer": silent_peer,
    "killed peer": killed_peer,
}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def sample_peak(pid: int, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, rss(pid))
        await asyncio.sleep(0.02)
    return peak


def good_client(port: int, tmp: Path) -> bool:
    """``secmoe infer`` on one held-out image; True iff it ends well with the plaintext
    model's prediction."""
    x = load_heldout()[0][5:6]
    np.save(tmp / "x.npy", x)
    infer = ["infer", "--connect", f"127.0.0.1:{port}", "--input", str(tmp / "x.npy")]
    out = subprocess.run(
        [*SECMOE, *infer, "--json", "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        return False
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res.get("prediction") == run(load_bundled(), x).output.argmax(-1).tolist()


def new_lines(log: Path, seen: int) -> tuple[list[str], int]:
    lines = log.read_text().splitlines()
    return lines[seen:], len(lines)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup-timeout", type=float, default=5.0, help="the server's (s)")
    ap.add_argument("--only", nargs="*", choices=sorted(ATTACKS), help="run these attacks")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    log = tmp / "server.log"
    cmd = [*SECMOE, "serve", "--listen", f"127.0.0.1:{port}"]
    cmd += ["--setup-timeout", f"{args.setup_timeout:g}"]
    print("server:", " ".join(cmd[2:]), file=sys.stderr)
    with log.open("w") as err:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    rows = []
    try:
        seen = 0
        while "serving" not in log.read_text():
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {log.read_text()}")
            await asyncio.sleep(0.1)
        _, seen = new_lines(log, seen)
        for name in args.only or ATTACKS:
            before = rss(server.pid)
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(sample_peak(server.pid, stop))
            t0 = time.monotonic()
            saw, dropped = await ATTACKS[name](port)
            while server.poll() is None and not any(
                k in line for line in new_lines(log, seen)[0] for k in ENDINGS
            ):
                await asyncio.sleep(0.05)
                if time.monotonic() - t0 > 180:
                    break
            if dropped < 0:  # from the kill to the log line
                dropped = time.monotonic() - t0
            stop.set()
            peak = await sampler
            lines, seen = new_lines(log, seen)
            alive = server.poll() is None
            after = rss(server.pid) if alive else 0
            good = alive and good_client(port, tmp)
            _, seen = new_lines(log, seen)
            said = next((ln for ln in lines if any(k in ln for k in ENDINGS)), "")
            said = re.sub(r" \(RSS .*\)$", "", said.split(" ", 2)[-1])  # no time, no RSS
            said = re.sub(r"^session \d+ from \S+: ", "", said)
            rows.append(
                {
                    "attack": name,
                    "survived": alive,
                    "server log": one_line(said, 300),
                    "attacker saw": one_line(saw, 300),
                    "seconds to drop": round(dropped, 2),
                    "rss before MB": round(before / 1e6),
                    "rss peak MB": round(peak / 1e6),
                    "rss after MB": round(after / 1e6),
                    "good client after": good,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    print_table(rows)
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0 if all(r["survived"] and r["good client after"] for r in rows) else 1


def print_table(rows: list[dict]) -> None:
    print(
        "| attack | survived | error shown (server log) | attacker told | drop (s) "
        "| RSS MB before / peak / after | good client after |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['rss before MB']} / {r['rss peak MB']} / {r['rss after MB']}"
        told = "yes" if r["attacker saw"].startswith(("abort", "refused")) else "no"
        print(
            f"| {r['attack']} | {'yes' if r['survived'] else 'NO'} | {r['server log']} | "
            f"{told} | {r['seconds to drop']:g} | {mem} | "
            f"{'yes' if r['good client after'] else 'NO'} |"
        )


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
