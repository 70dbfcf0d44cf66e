"""The import graph of the package and the scripts has no cycle.

Every module under python/tokvec and every script under scripts/ is parsed with `ast` (not imported), and
every import statement counts: top-level ones, imports inside functions (a lazy import is still a
dependency: it only hides the cycle until the function runs), and imports under `if TYPE_CHECKING:`
(a type that names a higher module couples the lower one to it just the same; the strict reading).

What an import is an edge to:
- `import tokvec.a.b` and `from tokvec.a import b` (when `tokvec.a.b` is a module) point at `tokvec.a.b`.
- `import tokvec`, `from tokvec import load` (a name, not a submodule) point at the package's `__init__`:
  the facade that re-exports everything, so a module below it must not use it.
- The parent packages Python initialises before a submodule (`tokvec`, `tokvec.train`) are not edges:
  their `__init__` files only re-export, and counting them would put every submodule on a cycle with
  its own package.
- Scripts import each other by file name (`import build_default_model`); those are edges between
  scripts. Imports of anything outside the package and the scripts are ignored.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python"
SCRIPTS = ROOT / "scripts"


def _modules() -> dict[str, Path]:
    """Module name -> file, for the package (dotted names) and the scripts (`scripts.<stem>`)."""
    mods: dict[str, Path] = {}
    for f in sorted((PACKAGE / "tokvec").rglob("*.py")):
        parts = list(f.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = f
    # the Rust extension (`tokvec._core`, described by its stub) is a leaf: it imports nothing of ours
    for f in sorted((PACKAGE / "tokvec").rglob("*.pyi")):
        mods.setdefault(".".join(f.relative_to(PACKAGE).with_suffix("").parts), f)
    for f in sorted(SCRIPTS.glob("*.py")):
        mods[f"scripts.{f.stem}"] = f
    return mods


def _resolve(name: str, mods: dict[str, Path], script: bool) -> str | None:
    """The known module an absolute dotted name points at (its longest known prefix), or None."""
    if script and f"scripts.{name.split('.')[0]}" in mods:
        return f"scripts.{name.split('.')[0]}"
    parts = name.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    if path.suffix == ".pyi":
        return set()
    script = mod.startswith("scripts.")
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            # `from a import b` is the module a.b when there is one, else the name b of module a
            targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in mods else base_name for a in node.names]
        else:
            continue
        for t in targets:
            r = _resolve(t, mods, script)
            if r is not None and r != mod:
                out.add(r)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is a knot of cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # the graph has a few dozen nodes: recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component (a walk inside it until a module repeats)."""
    cycles = []
    for comp in components(graph):
        members = set(comp)
        path, seen = [comp[0]], {comp[0]: 0}
        while True:  # walk inside the component until a node repeats: that stretch is a cycle
            nxt = min(w for w in graph[path[-1]] if w in members)
            if nxt in seen:
                cycles.append(path[seen[nxt] :] + [nxt])
                break
            seen[nxt] = len(path)
            path.append(nxt)
    return cycles


def test_graph_sees_the_package_and_the_scripts():
    graph = import_graph()
    assert "tokvec.model" in graph and "tokvec.train.evaluate" in graph and "scripts.build_tuned_model" in graph
    # the facade imports the model; a lazy import inside a function counts
    assert "tokvec.model" in graph["tokvec"]
    assert "tokvec.train.teacher" in graph["tokvec.train.cli"]


def test_find_cycles_reports_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    knots = components(graph)
    assert not knots, "import cycles:\n" + "\n".join(
        " -> ".join(cycle)
        + "\n    all edges among "
        + ", ".join(comp)
        + ": "
        + "; ".join(f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp)
        for comp, cycle in zip(knots, find_cycles(graph))
    )


def test_lower_modules_do_not_import_the_model():
    """Search, deduplication, clustering, splitting and the token explorer work on anything that embeds;
    only the facade, the CLI and the integrations above them know `Model`."""
    graph = import_graph()
    for low in (
        "tokvec.search",
        "tokvec.dedup",
        "tokvec.cluster",
        "tokvec.split",
        "tokvec.explore",
        "tokvec.distributed",
        "tokvec.formats",
        "tokvec.textio",
        "tokvec._io",
        "tokvec._validate",
        "tokvec.extract",
    ):
        assert "tokvec.model" not in graph.get(low, set()), low
        assert "tokvec" not in graph.get(low, set()), low
