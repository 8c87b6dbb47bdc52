"""The house rules of the package, checked from its source (docs/architecture.md): layers import only
downwards, no import circle, no module uses another's underscore names, no module over ~600 lines."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "evstore")

# The layer of each module (by dotted name prefix): format 1, storage 2, engine 3, public API 4,
# adapters and tools 5. Value modules (0) are used by every layer and import only each other and the
# record layout.
LAYERS = [
    ("evstore.format.layout", 0),  # the record layout and codes: the vocabulary every layer shares
    ("evstore.errors", 0), ("evstore.records", 0), ("evstore.lifecycle", 0), ("evstore.snapshots", 0),
    ("evstore.upcasting", 0), ("evstore.progress", 0), ("evstore._evlog_c", 1), ("evstore._build_evlog", 1),
    ("evstore.format", 1), ("evstore.storage", 2), ("evstore.engine", 3),
    ("evstore.store", 4), ("evstore.subscription", 4), ("evstore.consumer", 4), ("evstore.aio", 4),
    ("evstore", 4),
    ("evstore.tools", 5), ("evstore.recovery", 5), ("evstore.backup", 5), ("evstore.exporting", 5),
    ("evstore.importcheck", 5), ("evstore.migrate", 5), ("evstore.cli", 5), ("evstore.__main__", 5),
    ("evstore.eventsourcing", 5), ("evstore.bench", 5),
]


def layer(mod: str) -> int:
    best = max((p for p in LAYERS if mod == p[0] or mod.startswith(p[0] + ".")), key=lambda p: len(p[0]))
    return best[1]


def modules() -> dict[str, str]:
    out = {}
    for d, _dirs, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def imports(path: str, mod: str) -> list[tuple[str, list[str], bool]]:
    """(imported module, names, type-checking only) of every evstore import in a module."""
    tree = ast.parse(open(path).read())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for sub in node.body:
                type_only.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("evstore"):
            names = [a.name for a in node.names]
            if node.module == "evstore":  # from evstore import submodule
                for n in names:
                    out.append((f"evstore.{n}", [], id(node) in type_only))
            else:
                out.append((node.module, names, id(node) in type_only))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("evstore"):
                    out.append((a.name, [], id(node) in type_only))
    return out


MODULES = modules()


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_layers_import_only_downwards() -> None:
    bad = []
    for mod, path in MODULES.items():
        for target, _names, _type_only in imports(path, mod):
            t = _resolve(target)
            if t is None or t == "evstore" and mod != "evstore":
                continue  # the package itself re-exports the public API; using it is using the API
            if mod == "evstore" or mod.startswith("evstore.bench"):
                continue
            if layer(t) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) imports {t} (layer {layer(t)})")
    assert bad == []


def test_no_import_circle() -> None:
    """At run time: the engine's parts name `Core` in annotations only (under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, _names, type_only in imports(path, mod):
            if type_only:
                continue
            t = _resolve(target)
            if t and t != mod and t != "evstore" and not t.startswith(mod + "."):
                graph[mod].add(t)
    seen: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for n in graph[m]:
            if seen.get(n) == 1:
                cycle.extend(stack[stack.index(n):] + [n])
                return
            if n not in seen:
                visit(n, stack + [n])
                if cycle:
                    return
        seen[m] = 2

    for m in MODULES:
        if m not in seen and not cycle:
            visit(m, [m])
    assert cycle == []


def test_no_module_uses_another_modules_underscore_names() -> None:
    bad = []
    for mod, path in MODULES.items():
        for target, names, _type_only in imports(path, mod):
            for n in names:
                if n.startswith("_") and target != "evstore._evlog_c":
                    bad.append(f"{mod}: from {target} import {n}")
            if target.rpartition(".")[2].startswith("_") and target not in ("evstore._evlog_c", "evstore.__main__"):
                bad.append(f"{mod} imports the private module {target}")
    assert bad == []


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_module_is_over_about_600_lines(mod: str) -> None:
    with open(MODULES[mod]) as f:
        n = sum(1 for _ in f)
    assert n <= 630, f"{mod} has {n} lines"
