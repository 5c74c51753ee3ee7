"""The hash chains and the public feed's constants, in one place.

Every chain the venue publishes (each public topic, each account's private stream) starts at
`START` and steps with `step`: the next head is the blake2b-128 of the previous head and the
item's bytes. The server, the feed, the mirror, the client and `perpdex replay` all import these
names from here, so a change of algorithm or constant is one edit (docs/protocol.md describes
them for clients written in other languages).

This module imports nothing of the project: it sits at the bottom of the gateway's house.
"""
from __future__ import annotations

import zlib
from hashlib import blake2b

START = bytes(16)                   # a chain's head before its first item
HASH_SIZE = 16                      # bytes of a head (blake2b-128)

CHECKSUM_LEVELS = 25                # a book's levels a side in the checksum
FEED_KINDS = ("book", "trade", "mark", "funding", "liquidation", "status")
MIRROR_KINDS = ("book", "trade", "mark", "funding", "liquidation")   # a mirror's default topics
HEARTBEAT = b"heartbeat"            # the feed heartbeat's topic (every topic's last seq)


def step(head: bytes, data: bytes) -> bytes:
    """The head after `data`: blake2b-128 of `head` followed by `data`. O(len(data))."""
    return blake2b(head + data, digest_size=HASH_SIZE).digest()


def topic(kind: str, market: str) -> bytes:
    """The topic frame of a public message: `<kind>.<market>`, e.g. b"book.BTC-PERP"."""
    return f"{kind}.{market}".encode()


def side_text(levels) -> str:
    """One side's part of `checksum_text`: its best CHECKSUM_LEVELS levels, `price:qty` each."""
    return ",".join([f"{p}:{q}" for p, q in levels[:CHECKSUM_LEVELS]])


def checksum_text(bids, asks) -> str:
    """The checksummed string: the best 25 bids (best first), `|`, the best 25 asks (best
    first); each level `price:qty` in decimal integers (ticks, lots), levels joined by `,`.
    `bids` and `asks` are sequences of (price, qty) pairs, best first. An empty book is "|"."""
    return f"{side_text(bids)}|{side_text(asks)}"


def checksum(bids, asks) -> int:
    """CRC32 (IEEE 802.3, as zlib.crc32) of `checksum_text` in ASCII: an unsigned 32-bit
    integer. O(CHECKSUM_LEVELS)."""
    return zlib.crc32(checksum_text(bids, asks).encode())
