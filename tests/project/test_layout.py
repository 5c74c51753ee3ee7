"""The house's rules, checked: the engine's rooms depend only on rooms below them, the engine
reads no clock, socket, file, environment or randomness, one room owns `seq`, and bench/ and the
gateway stay on their side of the engine's public face; the gateway's modules import no circle
and no other module's private name, and none is above the size of a room (docs/architecture.md)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engine"

# Leaves first: a room may use only the rooms before it (engine/core.pxd describes each).
ROOMS = ["messages", "markets", "details", "statehash", "units", "book", "wire", "codec",
         "state", "events", "oracle", "margin", "ledger", "triggers", "matching", "entry", "risk",
         "funding", "liquidation", "lifecycle", "accounts", "reports", "snapshot", "fastpath",
         "core"]

_FROM_ROOM = re.compile(r"^\s*from\s+(?:engine\.(\w+)|\.(\w+))\s+c?import\b", re.M)
_FROM_ENGINE = re.compile(r"^\s*from\s+(?:engine|\.)\s+c?import\s+(\([^)]*\)|[^\n]*)", re.M)
_FORBIDDEN = re.compile(r"^\s*(?:import|from)\s+(time|random|os|socket|zmq|datetime|secrets|"
                        r"threading|asyncio|subprocess|pathlib)\b", re.M)


def _sources(room):
    return [p for p in (ENGINE / f"{room}.pyx", ENGINE / f"{room}.pxd", ENGINE / f"{room}.py")
            if p.exists()]


def _uses(path):
    """The rooms a source file imports or cimports."""
    text = path.read_text()
    found = {a or b for a, b in _FROM_ROOM.findall(text)}
    for names in _FROM_ENGINE.findall(text):
        found.update(n.split(" as ")[0].strip() for n in names.strip("()").split(",")
                     if n.strip())
    return found


def test_every_engine_module_is_a_room_of_the_layout():
    names = {p.stem for p in ENGINE.iterdir() if p.suffix in (".py", ".pyx", ".pxd")}
    # _checkout is not a room: it lets a checkout say `import engine` (engine/_checkout.py).
    assert names - {"__init__", "_checkout"} == set(ROOMS)


def test_the_rooms_import_each_other_relatively():
    """They compile as perpdex.engine.<room>: an absolute `engine.` import would resolve only
    through a checkout's alias (engine/_checkout.py), never in an installed wheel."""
    absolute = re.compile(r"^\s*(?:from|import)\s+(?:perpdex\.)?engine\b", re.M)
    wrong = [p.name for room in ROOMS for p in _sources(room) + [ENGINE / f"{room}.pyi"]
             if p.exists() and absolute.search(p.read_text())]
    assert wrong == []


def test_rooms_depend_only_on_rooms_below_them():
    wrong = []
    for k, room in enumerate(ROOMS):
        for path in _sources(room):
            for used in _uses(path) - {room, "messages"}:
                if used not in ROOMS[:k]:
                    wrong.append(f"{path.name} uses {used}")
    assert not wrong, wrong


def test_the_engine_reads_no_clock_socket_file_environment_or_randomness():
    found = [f"{p.name}: {m.group(0).strip()}" for room in ROOMS for p in _sources(room)
             for m in _FORBIDDEN.finditer(p.read_text())]
    assert not found, found


def test_only_the_events_room_moves_seq_and_only_core_moves_the_clock():
    seq = re.compile(r"\.seq\s*(\+=|-=|=(?!=))")
    clock = re.compile(r"\.clock\s*(\+=|-=|=(?!=))")
    for room in ROOMS:
        for p in _sources(room):
            text = p.read_text()
            if room not in ("events", "state"):
                assert not seq.search(text), f"{p.name} writes seq"
            if room not in ("core", "state"):
                assert not clock.search(text), f"{p.name} writes the clock"


# Who writes what (docs/architecture.md, "The engine's rooms"): a field of the state is written
# by its owning room, and by `state` where it is made.
OWNERS = {
    "cash": (r"\.(collateral|iso_margin)\s*(\+=|-=|=(?!=))|\bs\.(fees|deposits|withdrawals)"
             r"\s*(\+=|-=|=(?!=))", {"ledger"}),
    "the open-order counters": (r"\.(n_orders|open_buy|open_sell|n_ro)\s*(\+=|-=|=(?!=))",
                                {"matching"}),
    "the risk index": (r"\.(rlist|rkey)\s*(\+=|-=|\|=|&=|=(?!=))", {"risk"}),
    "a scope's known headroom": (r"\.headroom\s*(\+=|-=|=(?!=))", {"margin"}),
    "the margin epoch (through state.margin_moved only)":
        (r"\.margin_epoch\s*(\+=|-=|=(?!=))", set()),
    "a call's output modes": (r"\bs\.out\.\w+\s*(\+=|-=|\*=|=(?!=))|\bs\.out\s*=(?!=)", {"events"}),
}


def test_each_part_of_the_state_is_written_by_its_owner_only():
    wrong = [f"{p.name} writes {what}" for what, (pattern, owners) in OWNERS.items()
             for room in ROOMS if room not in owners | {"state"} for p in _sources(room)
             if re.search(pattern, p.read_text())]
    assert not wrong, wrong


def test_no_test_module_imports_another():
    uses = re.compile(r"^\s*(?:from|import)\s+tests\.(?:\w+\.)*test_\w+", re.M)
    wrong = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
             if uses.search(p.read_text())]
    assert not wrong, wrong


def test_bench_imports_nothing_from_tests():
    for p in (ROOT / "bench").glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+tests\b", p.read_text(), re.M), p.name


def test_the_gateway_uses_only_the_engines_public_face():
    public = {"messages", "codec", "markets",
              "_checkout"}  # gateway/__init__.py: `import gateway` inside a checkout
    uses = re.compile(r"^\s*from\s+(?:perpdex\.)?engine\.(\w+)\s+import", re.M)
    for p in (ROOT / "gateway").glob("*.py"):
        for m in uses.finditer(p.read_text()):
            assert m.group(1) in public, f"{p.name} imports engine.{m.group(1)}"


# ---- the gateway's rooms ------------------------------------------------------------------

GATEWAY = ROOT / "gateway"
MAX_LINES = 500
_PACKAGES = ("perpdex.gateway", "gateway")


def _gateway_modules() -> dict:
    return {p.stem: p for p in GATEWAY.glob("*.py") if p.stem != "__init__"}


def _within_gateway(node) -> str | None:
    """The gateway module a `from ... import` names ("" for the package), None outside it."""
    if node.level == 1:
        return node.module or ""
    for pkg in _PACKAGES:
        if node.module == pkg:
            return ""
        if (node.module or "").startswith(pkg + "."):
            return node.module[len(pkg) + 1:]
    return None


def _gateway_imports(path: Path, modules) -> list:
    """(module, name or None) of every import of a gateway module in `path`, at any depth (in a
    function too): `from .feed import Feed` gives ("feed", "Feed"), `from . import journal`
    ("journal", None)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                for pkg in _PACKAGES:
                    if a.name.startswith(pkg + "."):
                        found.append((a.name[len(pkg) + 1:].split(".")[0], None))
        elif isinstance(node, ast.ImportFrom):
            base = _within_gateway(node)
            if base:
                found += [(base.split(".")[0], a.name) for a in node.names]
            elif base == "":
                found += [(a.name, None) for a in node.names if a.name in modules]
    return found


def _gateway_graph() -> dict:
    modules = _gateway_modules()
    return {m: _gateway_imports(p, modules) for m, p in modules.items()}


def test_the_gateway_imports_no_circle():
    graph = {m: {t for t, _ in uses if t != m} for m, uses in _gateway_graph().items()}
    circles = []

    def walk(m, path):
        for t in sorted(graph.get(m, ())):
            if t in path:
                circles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t in graph:
                walk(t, path + [t])
    for m in sorted(graph):
        walk(m, [m])
    assert not circles, circles


def test_no_gateway_module_imports_another_ones_private_name():
    wrong = [f"{m} imports {t}.{name}" for m, uses in _gateway_graph().items()
             for t, name in uses
             if name and name.startswith("_")]
    assert not wrong, wrong


def test_no_gateway_module_is_above_the_size_of_a_room():
    big = {m: n for m, p in _gateway_modules().items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big
