"""Replay a command file through a fresh engine: files in, files out, a progress bar, a summary.

The same input always gives byte-identical output: the engine reads no clock, and this module
only moves bytes. Formats follow the file extension (`.jsonl`, `.msgpack`), `-` is stdin/stdout.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

from engine import CommandReader, Engine
from engine.codec import MsgpackFramer

CHUNK = 1 << 20          # bytes read per step; the engine gets them as one batch


def format_of(path: str, given: str | None) -> str:
    """The format for `path`: `given` if set, else from the extension; `-` means JSON Lines."""
    if given:
        return given
    if path == "-" or path.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if path.endswith((".msgpack", ".mpk", ".mp")):
        return "msgpack"
    raise SystemExit(f"perpdex: cannot tell the format of {path!r} from its extension; "
                     f"use .jsonl or .msgpack, or pass --in-format / --out-format")


@dataclass
class Summary:
    commands: int
    events: int
    fills: int
    seconds: float

    def line(self) -> str:
        rate = self.commands / self.seconds if self.seconds > 0 else float("inf")
        return (f"replayed {self.commands:,} commands -> {self.events:,} events "
                f"({self.fills:,} fills) in {self.seconds:.3f} s: {rate:,.0f} commands/s")


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int | None, stream=sys.stderr):
        self.total = total
        self.stream = stream
        self.on = stream.isatty()
        self.last = 0.0

    def update(self, done: int, commands: int) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r[{bar:<30}] {100 * frac:5.1f}%  {commands:,} commands")
        else:
            self.stream.write(f"\r{commands:,} commands")
        self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def replay_stream(src: BinaryIO, dst: BinaryIO, in_fmt: str, out_fmt: str,
                  total: int | None = None, engine: Engine | None = None) -> Summary:
    """Feed `src` to `engine` chunk by chunk, writing its events to `dst`."""
    eng = engine if engine is not None else Engine()
    progress = Progress(total)
    seq0, fills0, cmds0 = eng.seq, eng.n_fills, eng.n_commands
    done = 0
    t0 = time.perf_counter()
    if in_fmt == "msgpack":
        # msgpack goes through the engine's fast path, framed here chunk by chunk.
        framer = MsgpackFramer()

        def step(chunk: bytes) -> bytes:
            if not chunk:
                return eng.execute_many(framer.close(), out_fmt)
            frames, first, offset, bad = framer.split(chunk)
            out = eng.execute_msgpack(frames, first, offset, out_fmt)
            return out + eng.execute_many(bad, out_fmt) if bad else out
    else:
        reader = CommandReader(in_fmt)

        def step(chunk: bytes) -> bytes:
            items = reader.feed(chunk) if chunk else reader.close()
            return eng.execute_many(items, out_fmt) if items else b""
    while True:
        chunk = src.read(CHUNK)
        dst.write(step(chunk))
        if not chunk:
            break
        done += len(chunk)
        progress.update(done, eng.n_commands - cmds0)
    dst.flush()
    seconds = time.perf_counter() - t0
    progress.close()
    return Summary(eng.n_commands - cmds0, eng.seq - seq0, eng.n_fills - fills0, seconds)


def replay_file(inp: str, out: str, in_fmt: str | None = None,
                out_fmt: str | None = None) -> Summary:
    in_fmt = format_of(inp, in_fmt)
    out_fmt = format_of(out, out_fmt)
    src = sys.stdin.buffer if inp == "-" else open(inp, "rb")
    dst = sys.stdout.buffer if out == "-" else open(out, "wb")
    try:
        total = os.fstat(src.fileno()).st_size if inp != "-" else None
        return replay_stream(src, dst, in_fmt, out_fmt, total or None)
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if dst is not sys.stdout.buffer:
            dst.close()
