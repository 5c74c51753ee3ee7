"""Build the Cython core.

Fast by default, checked on demand: one commented table of compiler directives,
switched by environment variables (STYLE.md, anchor 9).

    PERPDEX_DEBUG=1     bounds checks, wraparound, initialized checks, line tracing, and the
                        engine's own checks where values cross rooms (`make debug-test`)
    PERPDEX_ANNOTATE=1  write the annotated HTML next to each .pyx (read it before optimising)
"""
import os
import re
import tomllib

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

# PERPDEX_CHECKS turns on the engine's own checks (`CHECKS` in engine/units.pxd).
MACROS = [("CYTHON_TRACE_NOGIL", "1"), ("PERPDEX_CHECKS", "1")] if DEBUG else []
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O2"]

# The rooms, leaves first (engine/core.pxd says what each is).
ROOMS = [
    "book", "wire", "state", "events", "oracle", "margin", "ledger", "triggers", "matching",
    "entry", "risk", "funding", "liquidation", "lifecycle", "accounts", "reports", "snapshot",
    "fastpath", "core",
]

# The repository keeps engine/ at its top; the distribution installs it as perpdex.engine
# (pyproject.toml, [tool.setuptools.package-dir]). Cython compiles a module's full name into
# it and finds a .pxd by that name (perpdex/engine/book.pxd), so it reads the .pxd files
# through a link under build/, made here. Without it a .pyx would compile without its own .pxd.
PXD_ROOT = os.path.join("build", "pxd")


def _pxd_link() -> str:
    link = os.path.join(PXD_ROOT, "perpdex", "engine")
    target = os.path.abspath("engine")
    if os.path.realpath(link) != target:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
    return PXD_ROOT


def long_description() -> str:
    """The README with its relative links made absolute, against the repository's address in
    pyproject.toml ([project.urls] Repository): on PyPI a link to docs/contract.md must lead to
    the repository's page, not to nothing (a folder's link too: GitHub shows it at blob/)."""
    with open("pyproject.toml", "rb") as f:
        repo = tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")
    with open("README.md", encoding="utf-8") as f:
        text = f.read()
    return re.sub(r"(?<!!)(\[[^\]]*\])\((?![a-z]+:|#)([^)\s]+)\)",
                  lambda m: f"{m.group(1)}({repo}/blob/main/{m.group(2)})", text)


extensions = [
    Extension(
        "perpdex.engine." + room,
        [f"engine/{room}.pyx"],
        define_macros=MACROS,
        extra_compile_args=CFLAGS,
    )
    for room in ROOMS
]

setup(
    long_description=long_description(),
    long_description_content_type="text/markdown",
    ext_modules=cythonize(
        extensions,
        include_path=[_pxd_link()],
        compiler_directives=DIRECTIVES,
        annotate=ANNOTATE,
    ),
)
