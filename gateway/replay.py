"""Replay a command file through a fresh engine: files in, files out, a progress bar, a summary.

The same input always gives byte-identical output: the engine reads no clock, and this module
only moves bytes. Formats follow the file extension (`.jsonl`, `.msgpack`), `-` is stdin/stdout. A folder is a
journal (gateway/journal.py; a data folder names its `journal/`): its commands are replayed.
Every rejection is named by where its command stands in the input (`line N` of JSON Lines,
`object N at byte B` of msgpack); `strict` stops at the first. `perpdex verify` is
gateway/verify.py.
"""
from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from perpdex.engine import CommandReader, Engine
from perpdex.engine.codec import MAX_LINE, MsgpackFramer

CHUNK = 1 << 20          # bytes read per step; the engine gets them as one batch


class UnknownFormat(ValueError):
    """A file whose extension names no format, and no format given."""


def format_of(path: str, given: str | None) -> str:
    """The format for `path`: `given` if set, else from the extension; `-` means JSON Lines.
    UnknownFormat if the extension does not tell."""
    if given:
        return given
    if path == "-" or path.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if path.endswith((".msgpack", ".mpk", ".mp")):
        return "msgpack"
    raise UnknownFormat(f"cannot tell the format of {path!r} from its extension; use .jsonl "
                        f"or .msgpack, or pass --in-format / --out-format")


@dataclass
class Summary:
    commands: int
    events: int
    fills: int
    seconds: float
    rejected: int = 0
    stopped: str | None = None      # strict: where the first rejection stopped the replay

    def line(self) -> str:
        rate = self.commands / self.seconds if self.seconds > 0 else float("inf")
        return (f"replayed {self.commands:,} commands -> {self.events:,} events "
                f"({self.fills:,} fills, {self.rejected:,} rejected) in {self.seconds:.3f} s: "
                f"{rate:,.0f} commands/s")


@dataclass
class Rejection:
    """A command the engine answered `rejected`: where it stands in the input, and why."""
    where: str
    command: str | None
    reason: str
    detail: str

    def line(self) -> str:
        detail = self.detail.removeprefix(self.where + ": ")
        return f"{self.where}: {self.command or 'command'} rejected: {self.reason}: {detail}"


# How a `rejected` event starts in each output format (events are written `type` first).
_REJECTED = {"jsonl": b'{"type":"rejected"', "msgpack": b"\xa4type\xa8rejected"}


def _rejected_events(out: bytes, fmt: str) -> list[dict]:
    """The `rejected` events among the events `out`, in order. O(len(out)), and a test of a few
    bytes when there is none."""
    if _REJECTED[fmt] not in out:
        return []
    if fmt == "jsonl":
        events = [msgspec.json.decode(line) for line in out.splitlines()
                  if line.startswith(_REJECTED[fmt])]
    else:
        framer = MsgpackFramer()
        frames = framer.split(out)[0]
        starts = [0, *framer.last_ends]
        events = [msgspec.msgpack.decode(frames[a:b]) for a, b in zip(starts, starts[1:])]
    return [ev for ev in events if ev.get("type") == "rejected"]


def _rejection(out: bytes, fmt: str, where: str) -> Rejection | None:
    """The rejection among one command's events `out`, if any."""
    for ev in _rejected_events(out, fmt):
        return Rejection(where, ev.get("command"), ev["reason"], ev["detail"])
    return None


class _Lines:
    """The line numbers of the commands CommandReader("jsonl") makes of each chunk: the lines
    the chunk completes, less the blank ones it skips (a line longer than MAX_LINE is a command
    however blank). O(chunk), asked only of a chunk with a rejection."""

    def __init__(self):
        self.done = 0           # lines completed before this chunk
        self.size = 0           # bytes of the unfinished line carried into it
        self.blank = True       # whether they are all blank

    def numbers(self, chunk: bytes) -> list[int]:
        if not chunk:           # the end: the unfinished line, if the reader made a command of it
            return [self.done + 1] if self.size > MAX_LINE or not self.blank else []
        pieces = chunk.split(b"\n")[:-1]
        out = []
        for i, piece in enumerate(pieces):
            size, blank = len(piece), not piece.strip()
            if i == 0:
                size, blank = size + self.size, blank and self.blank
            if size > MAX_LINE or not blank:
                out.append(self.done + 1 + i)
        return out

    def advance(self, chunk: bytes) -> None:
        cut = chunk.rfind(b"\n")
        tail = chunk[cut + 1:]
        if cut >= 0:
            self.done += chunk.count(b"\n")
            self.size, self.blank = 0, True
        self.size += len(tail)
        self.blank = self.blank and not tail.strip()


class Progress:
    """The progress bar (rich's) on stderr, only when stderr is a terminal: bytes read of the
    input's size (when it has one), commands so far, the rate and the time left. It is gone
    when the replay ends, before the summary."""

    def __init__(self, total: int | None, stream=sys.stderr):
        self.on = stream.isatty()
        if not self.on:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, Progress as Bar, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)
        self.bar = Bar(TextColumn("replay"), BarColumn(), TaskProgressColumn(),
                       TextColumn("{task.fields[commands]:,} commands"), TimeRemainingColumn(),
                       console=Console(file=stream), transient=True)
        self.task = self.bar.add_task("replay", total=total, commands=0)
        self.bar.start()

    def update(self, done: int, commands: int) -> None:
        if self.on:
            self.bar.update(self.task, completed=done, commands=commands)

    def close(self) -> None:
        if self.on:
            self.bar.stop()


def replay_stream(src: BinaryIO, dst: BinaryIO, in_fmt: str, out_fmt: str,
                  total: int | None = None, engine: Engine | None = None, strict: bool = False,
                  rejected=None) -> Summary:
    """Feed `src` to `engine` chunk by chunk, writing its events to `dst`; count the rejections.

    A chunk is one call into the engine. With `rejected` (called with each Rejection), the
    engine also says which of the chunk's commands it rejected, and each is named by where it
    stands. With `strict` (stop after the first rejection, its events written) each command is
    applied alone: a call into the engine per command (on the deep workload, JSON Lines
    replays about 1.4x slower, msgpack 2.4x)."""
    eng = engine if engine is not None else Engine()
    progress = Progress(total)
    seq0, fills0, cmds0 = eng.seq, eng.n_fills, eng.n_commands
    done = n_rejected = 0
    stopped = None
    outs: list[bytes] = []
    keep = outs.append
    marker = _REJECTED[out_fmt]
    apply = eng.execute_many
    alone = strict

    def name(out: bytes, indices: list, where) -> None:
        """Report the rejections of one call: `indices` says which of its commands (the
        engine's `rejected`), `where(k)` where the k-th stands, `out` is its events."""
        for k, ev in zip(indices, _rejected_events(out, out_fmt)):
            rejected(Rejection(where(k), ev.get("command"), ev["reason"], ev["detail"]))

    def rejection(out: bytes, where: str) -> bool:
        """Report the rejection in `out`; True to stop there."""
        nonlocal stopped
        r = _rejection(out, out_fmt, where)
        if r is None:
            return False
        if rejected is not None:
            rejected(r)
        if strict:
            stopped = where
        return strict

    def each(items) -> bool:
        """Apply Malformed items of the framer one by one (each detail says where it stands)."""
        for item in items:
            out = apply([item], out_fmt)
            keep(out)
            if marker in out and rejection(out, item.detail.split(":")[0]):
                return True
        return False

    if in_fmt == "msgpack":
        # msgpack goes through the engine's fast path, framed here chunk by chunk.
        framer = MsgpackFramer()
        fast = eng.execute_msgpack

        def step(chunk: bytes) -> bool:
            if not chunk:
                return each(framer.close())
            frames, first, offset, bad = framer.split(chunk)
            if not alone:
                indices = [] if rejected is not None else None
                out = fast(frames, first, offset, out_fmt, indices)
                keep(out)
                if indices:
                    starts = [0, *framer.last_ends]
                    name(out, indices, lambda k: f"object {first + k} at byte "
                                                 f"{offset + starts[k]}")
                if rejected is not None:
                    return each(bad)
                keep(apply(bad, out_fmt))
                return False
            view, start = memoryview(frames), 0
            for k, end in enumerate(framer.last_ends):
                out = fast(view[start:end], first + k, offset + start, out_fmt)
                keep(out)
                if marker in out and rejection(out, f"object {first + k} at byte "
                                                    f"{offset + start}"):
                    return True
                start = end
            return each(bad)
    else:
        reader = CommandReader(in_fmt)
        lines = _Lines()

        def step(chunk: bytes) -> bool:
            items = reader.feed(chunk) if chunk else reader.close()
            if not alone:
                indices = [] if rejected is not None else None
                out = apply(items, out_fmt, indices)
                keep(out)
                if indices:
                    numbers = lines.numbers(chunk)
                    name(out, indices, lambda k: f"line {numbers[k]}")
                lines.advance(chunk)
                return False
            numbers = None
            for k, item in enumerate(items):
                out = apply([item], out_fmt)
                keep(out)
                if marker in out:
                    numbers = numbers or lines.numbers(chunk)
                    if rejection(out, f"line {numbers[k]}"):
                        return True
            lines.advance(chunk)
            return False
    t0 = time.perf_counter()
    while True:
        chunk = src.read(CHUNK)
        stop = step(chunk)
        out = b"".join(outs)
        outs.clear()
        dst.write(out)
        n_rejected += out.count(marker)
        if stop or not chunk:
            break
        done += len(chunk)
        progress.update(done, eng.n_commands - cmds0)
    dst.flush()
    seconds = time.perf_counter() - t0
    progress.close()
    return Summary(eng.n_commands - cmds0, eng.seq - seq0, eng.n_fills - fills0, seconds,
                   n_rejected, stopped)


def journal_folder(path: str) -> Path | None:
    """The journal folder `path` names: a journal folder, or a data folder holding one."""
    p = Path(path)
    if not p.is_dir():
        return None
    return p / "journal" if (p / "journal").is_dir() else p


def replay_file(inp: str, out: str, in_fmt: str | None = None,
                out_fmt: str | None = None, strict: bool = False, rejected=None) -> Summary:
    out_fmt = format_of(out, out_fmt)
    folder = journal_folder(inp) if inp != "-" else None
    if folder is not None:          # a journal: its commands, checked record by record
        from .journal import commands
        src = io.BytesIO(commands(folder))
        dst = sys.stdout.buffer if out == "-" else open(out, "wb")
        try:
            return replay_stream(src, dst, "msgpack", out_fmt, len(src.getbuffer()) or None,
                                 strict=strict, rejected=rejected)
        finally:
            if dst is not sys.stdout.buffer:
                dst.close()
    in_fmt = format_of(inp, in_fmt)
    src = sys.stdin.buffer if inp == "-" else open(inp, "rb")
    dst = sys.stdout.buffer if out == "-" else open(out, "wb")
    try:
        total = os.fstat(src.fileno()).st_size if inp != "-" else None
        return replay_stream(src, dst, in_fmt, out_fmt, total or None, strict=strict,
                             rejected=rejected)
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if dst is not sys.stdout.buffer:
            dst.close()
