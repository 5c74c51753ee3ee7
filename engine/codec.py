"""Commands from bytes: JSON Lines and msgpack streams, decoders built once.

Whatever cannot be read becomes a `Malformed` item carrying a sentence for the `rejected` event's
`detail` (msgspec names the path, as in "Expected `int`, got `str` - at `$.amount`") and whatever
could still be recovered of `type`, `account`, `market` and `cid`. A bad line never stops a stream.
"""
from __future__ import annotations

from typing import Union

import msgspec

from .messages import COMMAND_TYPES, AnyCommand, AnyEvent, Command
from .wire import msgpack_frames

FORMATS = ("jsonl", "msgpack")


class Malformed(msgspec.Struct, frozen=True):
    """Input that is not a valid command; the engine answers it with `invalid_command`."""

    detail: str
    command: Union[str, None] = None
    account: Union[int, str, None] = None
    market: Union[str, None] = None
    cid: Union[int, str, None] = None


Item = Union[Command, Malformed]

_json_cmd = msgspec.json.Decoder(AnyCommand)
_json_cmds = msgspec.json.Decoder(list[AnyCommand])
_mp_cmd = msgspec.msgpack.Decoder(AnyCommand)
_mp_cmds = msgspec.msgpack.Decoder(list[AnyCommand])
_json_any = msgspec.json.Decoder()
_mp_any = msgspec.msgpack.Decoder()
_mp_events = msgspec.msgpack.Decoder(list[AnyEvent])
_json_events = msgspec.json.Decoder(AnyEvent)

_I64 = (-(2**63), 2**63 - 1)


def _recover(raw_decoder, raw: bytes, detail: str) -> Malformed:
    """Keep what can be read of a bad command, so the rejection names it."""
    try:
        obj = raw_decoder.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return Malformed(detail)
    if not isinstance(obj, dict):
        return Malformed(detail)

    def pick(key, types):
        v = obj.get(key)
        if type(v) in types and (type(v) is not int or _I64[0] <= v <= _I64[1]):
            if type(v) is not str or len(v) <= 64:
                return v
        return None

    return Malformed(
        detail,
        command=pick("type", (str,)),
        account=pick("account", (int, str)),
        market=pick("market", (str,)),
        cid=pick("cid", (int, str)),
    )


_KNOWN = ", ".join(sorted(COMMAND_TYPES))


def _sentence(e: Exception) -> str:
    """msgspec's message, made plainer where it is terse."""
    text = str(e)
    if text.startswith("Invalid value") and text.endswith("- at `$.type`"):
        return f"unknown command type {text[len('Invalid value '):-len(' - at `$.type`')]}; " \
               f"expected one of: {_KNOWN}"
    if text == "Object missing required field `type`":
        return "the command has no `type` field"
    return text


TOO_DEEP = "the command is nested too deeply to be read"
# The longest JSON line read (a longer one is answered invalid_command and skipped to its end).
MAX_LINE = 1 << 20


def _too_long() -> str:
    return f"the line is longer than {MAX_LINE} bytes and is skipped"


def decode_json(line: bytes, where: str = "") -> Item:
    """One JSON command; never raises."""
    try:
        return _json_cmd.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return _recover(_json_any, line, f"{where}{_sentence(e)}")
    except RecursionError:
        return Malformed(f"{where}{TOO_DEEP}")


def decode_msgpack(obj: bytes, where: str = "") -> Item:
    """One msgpack command; never raises."""
    try:
        return _mp_cmd.decode(obj)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return _recover(_mp_any, obj, f"{where}{_sentence(e)}")
    except RecursionError:
        return Malformed(f"{where}{TOO_DEEP}")


class CommandReader:
    """Splits a stream into commands, chunk by chunk, keeping partial input for the next chunk.

    `feed(data)` returns the items that are complete; `close()` returns what was left (a line
    without its newline, or a truncated msgpack object, as `Malformed`). Positions in a detail are
    line numbers (JSON Lines) or object numbers and byte offsets (msgpack), counted from 1 over the
    whole stream. Cost: one msgspec call per chunk when the chunk is clean, one per item otherwise.
    """

    def __init__(self, fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self._parts: list[bytes] = []   # the line being read (jsonl), in pieces: linear time
        self._size = 0                  # its length so far
        self._count = 0                 # lines read so far (jsonl)
        self._framer = MsgpackFramer()

    def feed(self, data: bytes) -> list[Item]:
        if self.fmt == "msgpack":
            return self._feed_msgpack(data)
        return self._feed_jsonl(bytes(data))

    def close(self) -> list[Item]:
        if self.fmt == "msgpack":
            return self._framer.close()
        if self._size > MAX_LINE:
            self._parts, self._size = [], 0
            self._count += 1
            return [Malformed(f"line {self._count}: {_too_long()}")]
        tail = b"".join(self._parts)
        self._parts, self._size = [], 0
        if not tail.strip():
            return []
        self._count += 1
        return [decode_json(tail, f"line {self._count}: ")]

    # ---- JSON Lines ----------------------------------------------------------------------

    def _feed_jsonl(self, data: bytes) -> list[Item]:
        cut = data.rfind(b"\n")
        if cut < 0:
            self._keep(data)
            return []
        first_nl = data.find(b"\n")
        head: list[Item] = []
        if self._parts or self._size:
            # the line carried over from earlier chunks ends at the first newline here
            self._keep(data[:first_nl])
            self._count += 1
            if self._size > MAX_LINE:
                head = [Malformed(f"line {self._count}: {_too_long()}")]
            else:
                line = b"".join(self._parts)
                if line.strip():
                    head = [decode_json(line, f"line {self._count}: ")]
            self._parts, self._size = [], 0
            data = data[first_nl + 1:]
            cut -= first_nl + 1
        self._keep(data[cut + 1:])
        if cut < 0:
            return head
        return head + self._lines(data[: cut + 1])

    def _keep(self, piece: bytes) -> None:
        """Hold a piece of the unfinished line; past MAX_LINE only its length is kept."""
        self._size += len(piece)
        if self._size <= MAX_LINE:
            if piece:
                self._parts.append(piece)
        else:
            self._parts = []

    def _lines(self, body: bytes) -> list[Item]:
        first = self._count
        self._count += body.count(b"\n")
        if len(body) <= MAX_LINE or max(map(len, body.split(b"\n"))) <= MAX_LINE:
            try:
                return _json_cmd.decode_lines(body)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                pass
        out: list[Item] = []
        for n, line in enumerate(body.split(b"\n")[:-1], start=first + 1):
            if len(line) > MAX_LINE:
                out.append(Malformed(f"line {n}: {_too_long()}"))
            elif line.strip():
                out.append(decode_json(line, f"line {n}: "))
        return out

    # ---- msgpack -------------------------------------------------------------------------

    def _feed_msgpack(self, data: bytes) -> list[Item]:
        frames, first, offset, bad = self._framer.split(data)
        out: list[Item] = []
        if frames:
            ends = self._framer.last_ends
            try:
                # Fast path: frame the clean run as one msgpack array, decode it in one call.
                out = _mp_cmds.decode(b"\xdd" + len(ends).to_bytes(4, "big") + frames)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                out = []
                start = 0
                for k, end in enumerate(ends, start=first):
                    out.append(decode_msgpack(frames[start:end], f"object {k} at byte {offset + start}: "))
                    start = end
        return out + bad


class MsgpackFramer:
    """Cuts a msgpack stream into runs of complete objects, chunk by chunk.

    `split(chunk)` returns `(frames, first, offset, bad)`: the complete objects as one buffer, the
    number of the first (from 1) and its byte offset in the stream, and a `Malformed` for a byte
    that starts no msgpack object (nothing after it can be framed). `close()` reports a truncated
    tail. O(n) in the bytes.
    """

    def __init__(self, count: int = 0, offset: int = 0):
        """`count` objects and `offset` bytes of the stream came before (for the numbering)."""
        self._tail = b""
        self._count = count
        self._offset = offset
        self._broken = False
        self.last_ends: list[int] = []

    def split(self, data: bytes):
        if self._broken:
            return b"", self._count + 1, self._offset, []
        if self._tail:
            data = self._tail + data
            self._tail = b""
        ends, error = msgpack_frames(data)
        first, offset = self._count + 1, self._offset
        self.last_ends = ends
        cut = ends[-1] if ends else 0
        self._count += len(ends)
        bad: list[Malformed] = []
        if error is not None:
            at, why = error
            self._count += 1
            self._broken = True
            bad.append(Malformed(
                f"object {self._count} at byte {offset + at}: {why}; the rest of the stream "
                f"({len(data) - at} bytes) cannot be framed and is skipped"))
            self._offset += len(data)
        else:
            self._offset += cut
            self._tail = data[cut:]
        return data[:cut], first, offset, bad

    def close(self) -> list[Malformed]:
        tail, self._tail = self._tail, b""
        if self._broken or not tail:
            return []
        self._count += 1
        return [Malformed(f"object {self._count} at byte {self._offset}: the stream ends inside "
                          f"a msgpack object ({len(tail)} bytes)")]


def decode_event_json(line: bytes):
    return _json_events.decode(line)
