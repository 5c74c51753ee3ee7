"""The state digest: blake2b-128 of the canonical state, msgpack-encoded (docs/state-hash.md).

Equal states give equal digests however they were reached: the canonical form lists markets by
name, each book best price first and oldest order first, and positions by account then market;
it leaves out the event counter `seq`, which numbers the stream rather than the state.
"""
import hashlib

import msgspec

_encode = msgspec.msgpack.encode


def digest(state: dict) -> str:
    return hashlib.blake2b(_encode(state), digest_size=16).hexdigest()
