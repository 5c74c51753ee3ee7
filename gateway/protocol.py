"""The wire format of `perpdex serve` as types (docs/protocol.md): one msgspec Struct per request,
a tagged union on `type`, decoders and the encoder built once.

A request is decoded straight from its bytes into its Struct, so that every field is checked
(type, range, length) before anything runs, and a bad one is answered `invalid_command` with
msgspec's message, which names the field (`$.qty`). The commands of the contract are the engine's
own Structs (engine/messages.py) without `ts`, which the server stamps as it sequences them, and,
for a trader's commands, without `account`, which comes from the key; they are derived from the
engine's Structs here, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Annotated, Union

import msgspec
from msgspec import Meta, Raw, Struct

from perpdex.engine import messages as M

# req_id: an integer (msgpack's range, -2**63 .. 2**64-1) or a string of at most 128 characters.
# Identity is exact: 1 and "1" are two ids; true, 1.0, lists and maps are refused (a bool or a
# float would compare equal to an integer, a list or a map cannot be kept as a key).
ReqId = Union[int, Annotated[str, Meta(max_length=128)]]
MAX_DEPTH = 100                          # levels a side in a `book` request


class Request(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True, frozen=True,
              gc=False):
    """Base of every request: an optional client `req_id`, echoed in the reply."""

    req_id: Union[ReqId, None] = None


# ---- the contract's commands, as requests ------------------------------------------------

TRADER = ("new_order", "cancel", "cancel_all", "amend", "query_account", "set_leverage",
          "set_margin_mode", "transfer_margin", "withdraw")
ORACLE = ("oracle",)
ADMIN = ("create_market", "deposit", "audit", "state_hash", "clock", "set_market_status",
         "settle_market", "update_market")
ROLES = {"trader": frozenset(TRADER), "oracle": frozenset(ORACLE), "admin": frozenset(ADMIN)}
CANCELS = frozenset({"cancel", "cancel_all"})


def _request_of(tag: str, max_deposit: int) -> type:
    """The request Struct of engine command `tag`: its fields in its order, less `ts` (and less
    `account` for a trader's command); an admin deposit is bounded by `max_deposit`."""
    cmd = M.COMMAND_TYPES[tag]
    fields = []
    for f in msgspec.structs.fields(cmd):
        if f.name == "ts" or (f.name == "account" and tag in TRADER):
            continue
        typ = f.type
        if tag == "deposit" and f.name == "amount":
            typ = Annotated[int, Meta(gt=0, le=max_deposit)]
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, typ, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, typ, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, typ))
    name = "".join(p.title() for p in tag.split("_")) + "Request"
    req = msgspec.defstruct(name, fields, bases=(Request,), tag=tag, module=__name__)
    req.command = cmd                    # the engine Struct it becomes
    req.tag = tag
    req.trader = tag in TRADER           # its engine Struct takes the account first
    return req


# ---- the gateway's own requests ------------------------------------------------------------

class Heartbeat(Request, tag="heartbeat"):
    pass


class Session(Request, tag="session"):
    cancel_on_disconnect: bool


class ScheduleCancel(Request, tag="schedule_cancel"):
    after_ms: Union[Annotated[int, Meta(ge=1, le=86_400_000)], None] = None


class Subscribe(Request, tag="subscribe"):
    resume_from: Union[Annotated[int, Meta(ge=0, le=M.INT64_MAX)], None] = None


class Book(Request, tag="book"):
    market: M.MarketName
    depth: Annotated[int, Meta(ge=1, le=MAX_DEPTH)] = 5


class Markets(Request, tag="markets"):
    """With `prices`, each market's last index and mark too."""
    prices: bool = False


class Snapshot(Request, tag="snapshot"):
    """The public book as the last `book` delta left it (gateway/feed.py): all levels, or the
    best `depth` a side."""
    market: M.MarketName
    depth: Union[Annotated[int, Meta(ge=1, le=M.INT64_MAX)], None] = None


class Health(Request, tag="health"):
    """Is the server up, and how far along: seq, clock, connections (docs/observability.md)."""


class Login(Request, tag="login"):
    account: Annotated[str, Meta(min_length=1, max_length=64)]


class Batch(Request, tag="batch"):
    items: list[Raw]                     # each decoded on its own: one status per item


GATEWAY = (Heartbeat, Session, ScheduleCancel, Subscribe, Book, Markets, Snapshot, Health, Login,
           Batch)
for _cls in GATEWAY:
    _cls.tag = _cls.__struct_config__.tag
    _cls.command = None

# Weights in the account's request budget (Limits.request_rate): what a request costs the server.
WEIGHTS = {"markets": 2, "subscribe": 5}


SNAPSHOT_FULL = 20                       # the weight of a snapshot of every level


def weight(req) -> int:
    """Tokens a request takes from the request budget: 1, a `book` 1 per 10 levels more, a
    `snapshot` likewise up to SNAPSHOT_FULL (that of the whole book)."""
    cls = type(req)
    if cls is Book:
        return 1 + req.depth // 10
    if cls is Snapshot:
        return SNAPSHOT_FULL if req.depth is None else min(SNAPSHOT_FULL, 1 + req.depth // 10)
    return WEIGHTS.get(req.tag, 1)


class Codec:
    """The decoders of one server (they depend on its limits) and the one encoder."""

    def __init__(self, max_deposit: int):
        self.commands = tuple(_request_of(tag, max_deposit) for tag in TRADER + ORACLE + ADMIN)
        self.request = msgspec.msgpack.Decoder(Union[self.commands + GATEWAY])   # type: ignore
        self.item = msgspec.msgpack.Decoder(Union[self.commands])                 # type: ignore
        self.encode = msgspec.msgpack.Encoder().encode


# msgpack heads: (first byte range, size of the length that follows, items that follow).
_FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
          0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17}
_SIZED = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4,      # bin, str: bytes follow
          0xc7: 1, 0xc8: 2, 0xc9: 4}                                  # ext: type byte too
_COUNTED = {0xdc: (2, 1), 0xdd: (4, 1), 0xde: (2, 2), 0xdf: (4, 2)}   # array, map


# The most msgpack values (keys, values and what they hold) that `peek_req_id` walks: a req_id
# further into an unreadable request is not looked for. Walking is Python work done before any
# budget is taken, so it must be bounded: 60,000 values used to cost the loop 8 ms a request.
PEEK_VALUES = 256


def _skip(data: bytes, pos: int, budget: list) -> int:
    """The position after the msgpack value at `pos`, walked without recursion (a request
    nested thousands deep is walked in O(bytes) and a constant stack). Each value walked takes
    one from `budget[0]`; ValueError once it runs out."""
    todo = 1
    while todo:
        todo -= 1
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("too many values")
        b = data[pos]
        pos += 1
        if b <= 0x7f or b >= 0xe0:
            continue
        if 0x80 <= b <= 0x8f:
            todo += 2 * (b & 0x0f)
        elif 0x90 <= b <= 0x9f:
            todo += b & 0x0f
        elif 0xa0 <= b <= 0xbf:
            pos += b & 0x1f
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            k = _SIZED[b]
            pos += k + int.from_bytes(data[pos:pos + k], "big") + (1 if b in (0xc7, 0xc8, 0xc9)
                                                                     else 0)
        elif b in _COUNTED:
            k, per = _COUNTED[b]
            todo += per * int.from_bytes(data[pos:pos + k], "big")
            pos += k
        else:
            raise ValueError("not msgpack")
        if pos > len(data):
            raise ValueError("truncated")
    return pos


_value = msgspec.msgpack.Decoder()


def peek_req_id(data: bytes):
    """The `req_id` of a request that did not decode, if it can be read at all (else None):
    the top-level map is walked key by key without decoding the other values, among its
    first PEEK_VALUES values only. O(PEEK_VALUES), whatever the request's size."""
    budget = [PEEK_VALUES]
    try:
        b = data[0]
        if 0x80 <= b <= 0x8f:
            n, pos = b & 0x0f, 1
        elif b in (0xde, 0xdf):
            k = 2 if b == 0xde else 4
            n, pos = int.from_bytes(data[1:1 + k], "big"), 1 + k
        else:
            return None
        for _ in range(n):
            end = _skip(data, pos, budget)
            key = data[pos:end]
            pos, end = end, _skip(data, end, budget)
            if key == b"\xa6req_id":
                return _value.decode(data[pos:end])
            pos = end
    except (IndexError, ValueError, msgspec.DecodeError, RecursionError):
        return None
    return None


def invalid_detail(e: Exception) -> str:
    """The `detail` of an `invalid_command`: msgspec's message, or a sentence for the cases that
    a client of the old protocol meets."""
    text = str(e)
    if isinstance(e, RecursionError):
        return "nested too deeply: a request is at most a few levels deep"
    if "$.req_id" in text:
        return f"req_id must be an integer or a string of at most 128 characters ({text})"
    if "unknown field `account`" in text:
        return "`account` comes from your key; leave it out"
    if "unknown field `ts`" in text:
        return "`ts` is stamped by the server as it sequences the command; leave it out"
    if "missing required field `type`" in text:
        return "a request needs a `type` (docs/protocol.md lists them)"
    if "at `$.type`" in text:
        return f"unknown request type ({text}); docs/protocol.md lists them"
    if not isinstance(e, msgspec.ValidationError):
        return f"not msgpack: {text}"
    if text.startswith("Expected `object`"):
        return f"a request is a msgpack map ({text})"
    return text


def error(req_id, reason: str, detail: str) -> dict:
    return {"req_id": req_id, "ok": False, "reason": reason, "detail": detail}
