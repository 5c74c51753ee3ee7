"""Build the Cython core.

Fast by default, checked on demand: one commented table of compiler directives,
switched by environment variables (STYLE.md, anchor 9).

    PERPDEX_DEBUG=1     bounds checks, wraparound, initialized checks, line tracing
    PERPDEX_ANNOTATE=1  write the annotated HTML next to each .pyx (read it before optimising)
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("PERPDEX_DEBUG") == "1"
ANNOTATE = os.environ.get("PERPDEX_ANNOTATE") == "1"

DIRECTIVES = {
    "language_level": 3,
    # Indexing of C arrays is checked by our own code at the edge; off unless debugging.
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    # Python division semantics stay ON: rounding direction is part of the contract,
    # and C division truncates toward zero. The core uses explicit floor/ceil helpers.
    "cdivision": False,
    "nonecheck": DEBUG,
    "embedsignature": True,
    "linetrace": DEBUG,
}

MACROS = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O2"]

# The rooms, leaves first (engine/core.pxd says what each is).
MODULES = [
    "engine.book", "engine.wire", "engine.state", "engine.events", "engine.margin",
    "engine.ledger", "engine.triggers", "engine.matching", "engine.entry", "engine.risk",
    "engine.funding", "engine.liquidation", "engine.accounts", "engine.reports",
    "engine.snapshot", "engine.fastpath", "engine.core",
]

extensions = [
    Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        define_macros=MACROS,
        extra_compile_args=CFLAGS,
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        annotate=ANNOTATE,
    ),
)
