"""`import engine` and `import gateway` inside a checkout: the same modules as perpdex.*.

The distribution installs these folders as perpdex.engine and perpdex.gateway, and claims no
generic top-level name. A checkout's top folder still holds engine/ and gateway/, so from there
`import engine` finds the folder itself. Loading it under that short name would load every
Cython room a second time, with its own types, distinct from perpdex.engine's. So the short
name is made an alias instead: `sys.modules["engine"]` becomes perpdex.engine, and a finder
answers `engine.X` with the module perpdex.engine.X itself (one module, two names).
`python -m gateway.cli` keeps working the same way.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `short.X` as `full.X`; loading it puts the real module under the short name."""

    def __init__(self, short: str, full: str):
        self.short, self.full = short, full

    def _real_name(self, name: str) -> str | None:
        if name.startswith(self.short + "."):
            return self.full + name[len(self.short):]
        return None

    def find_spec(self, name, path=None, target=None):
        real = self._real_name(name)
        if real is None:
            return None
        spec = importlib.util.find_spec(real)
        if spec is None:
            return None
        return importlib.util.spec_from_loader(
            name, self, origin=spec.origin,
            is_package=spec.submodule_search_locations is not None)

    def create_module(self, spec):
        return None                       # a placeholder; exec_module swaps the real one in

    def exec_module(self, module) -> None:
        # importlib returns whatever sys.modules holds under the name once this returns.
        sys.modules[module.__name__] = importlib.import_module(self._real_name(module.__name__))

    def get_code(self, name):             # for runpy: `python -m gateway.cli`
        real = importlib.util.find_spec(self._real_name(name))
        return real.loader.get_code(real.name)


def alias(short: str, full: str) -> None:
    """Make `short` (and every `short.X`) the same module objects as `full` (and `full.X`)."""
    if not any(isinstance(f, _Alias) and f.short == short for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias(short, full))
    sys.modules[short] = importlib.import_module(full)
