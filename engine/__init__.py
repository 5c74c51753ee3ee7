"""perpdex engine: a deterministic matching state machine for perpetual futures.

    from perpdex.engine import Engine, messages as M
    eng = Engine()
    events = eng.execute(M.CreateMarket(...))

See docs/engine-api.md. The engine never reads the wall clock, sockets, files or randomness.
Installed, this package is perpdex.engine; inside a checkout `import engine` names the same
modules (engine/_checkout.py).
"""
if __name__ == "engine":  # the checkout's folder, found by its short name
    try:
        import perpdex.engine
    except ModuleNotFoundError as e:  # pragma: no cover - the message is the point
        if e.name not in ("perpdex", "perpdex.engine"):
            raise
        raise ImportError(
            "perpdex is not installed: run `make install` (or `pip install -e .`) in the "
            f"repository, then import perpdex.engine. ({e})") from e
    from perpdex.engine._checkout import alias
    alias("engine", "perpdex.engine")
else:
    try:
        from .core import Engine, ROUTE, ROW_FIELDS
    except ImportError as e:  # pragma: no cover - the message is the point
        raise ImportError(
            "perpdex's Cython core (perpdex.engine.core) is not built: run `make install` (or "
            "`pip install -e .`) in the repository. There is no pure-Python fallback, so that "
            f"nothing measures or runs the slow path by accident. ({e})"
        ) from e

    from . import messages
    from .codec import CommandReader, Malformed

    __all__ = ["Engine", "ROUTE", "ROW_FIELDS", "messages", "CommandReader", "Malformed"]
