"""The module graph: no import cycles, and the runtime never needs the test rigs.

A cycle means a piece of code sits in the wrong module; the runtime importing ``edged_testing``
would put the simulator (and its ``cryptography`` dependency) on every Pi.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edged", "edged_testing")
# What the device runs: every entry point and the modules they load lazily.
RUNTIME_MODULES = ("edged.cli", "edged.daemon.run", "edged.edgectl", "edged.chat",
                   "edged.knowledge.sync", "edged.knowledge.evaluate", "edged.audio.voice",
                   "edged.device_tools", "edged.knowledge.status", "edged.ota.apply",
                   "edged.ota.cli", "edged.ota.pull", "edged.ota.admit")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (lazy and TYPE_CHECKING included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in mods:
                        edges.add(sub)
                    elif node.module in mods:
                        edges.add(node.module)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "edged.daemon.run" in graph and "edged_testing.sim.server" in graph
    assert cycles(graph) == []


def test_runtime_modules_never_import_the_rigs() -> None:
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("edged."):
            assert not {e for e in edges if e.startswith("edged_testing")}, name


def run_fresh(code: str) -> str:
    """What ``code`` prints in a fresh interpreter (the tests below print the modules they
    must not find loaded); it must exit cleanly."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_runtime_imports_without_cryptography_or_rigs() -> None:
    """In a fresh interpreter where ``cryptography`` cannot be imported, every runtime module
    loads, and neither it nor the rigs end up in ``sys.modules``."""
    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"       # any import of it raises ImportError
        "import importlib\n"
        f"for m in {RUNTIME_MODULES!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.startswith('edged_testing'))\n"
        "print(bad)\n")
    assert run_fresh(code) == "[]"


def test_daemon_leaves_out_the_html_parser_and_numpys_random() -> None:
    """lxml (4 MB resident) is for the nightly sync's HTML documents, and numpy.random (2 MB)
    is not needed for the echo canceller's dither: the daemon's knowledge tool (which imports
    the chunk model) and a running canceller must not load them."""
    code = ("import sys, numpy as np, edged.daemon.run, edged.knowledge.tool, "
            "edged.knowledge.status\n"
            "from edged.audio.frontend import EchoCanceller\n"
            "EchoCanceller().process(np.zeros(480), np.zeros(480))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lxml', 'numpy.random'))))\n")
    assert run_fresh(code) == "[]"


def test_daemon_loads_pynacl_only_to_verify_a_bundle() -> None:
    """A 512 MB device pays for PyNaCl (cffi + libsodium) only when a bundle arrives."""
    code = ("import sys, edged.daemon.run, edged.ota.apply, edged.ota.state, edged.edgectl\n"
            "print(sorted(m for m in sys.modules if m.startswith(('nacl', '_cffi'))))\n")
    assert run_fresh(code) == "[]"
