"""perpdex engine: a deterministic matching state machine for perpetual futures.

    from engine import Engine, messages as M
    eng = Engine()
    events = eng.execute(M.CreateMarket(...))

See docs/engine-api.md. The engine never reads the wall clock, sockets, files or randomness.
"""
try:
    from .core import Engine
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "perpdex's Cython core (engine.core) is not built: run `make install` (or "
        "`pip install -e .`) in the repository. There is no pure-Python fallback, so that nothing "
        f"measures or runs the slow path by accident. ({e})"
    ) from e

from . import messages
from .codec import CommandReader, Malformed

__all__ = ["Engine", "messages", "CommandReader", "Malformed"]
