"""The module graph stays the shape the design draws: no import cycles, stages meet only through each
other's packages, and the command line starts without torch.

Reads every module under src/ratingloop with `ast`: imports at module level and inside functions (a
function-level import still ties the two modules together; it only hides the tie until the function runs).
Imports under `if TYPE_CHECKING:` never run and are left out. Recipes that run.py loads by name
(`import_module`) are not seen; they are ordinary modules of the train stage.

A stage is a package directly under ratingloop/ (store, serve, signals, dataset, train, models, simulate,
evaluate, ...). A module in one stage may import another stage's package (`ratingloop.dataset`, whose
`__init__` names what the stage offers) or a module in PUBLIC below, and nothing else of it. Top-level modules
are either the shared base (SHARED: errors, settings), which anyone imports, or the entry points (cli.py,
loop.py, demo.py, ...), which know the order of the stages (the style guide) and may import anything, but which
no stage imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import ratingloop

ROOT = Path(ratingloop.__file__).parent

SHARED = {"ratingloop", "ratingloop.errors", "ratingloop.config", "ratingloop.pipeline_config", "ratingloop.provenance",
          "ratingloop.waits"}

# module -> why other stages may import it directly; keep this short: a new entry needs a reason no
# package export gives
PUBLIC = {
    "ratingloop.store.tables": "the schema: stages hand over through these tables, read with SQLAlchemy Core",
    "ratingloop.store.db": "engines and write_transaction, the one transaction every stage commits its outputs in",
    "ratingloop.store.records": "the validated shapes of interactions and ratings (KINDS, clean_rating): the input "
                                "contract every writer and reader shares",
    "ratingloop.store.writes": "new_id and write_units: one id scheme and one way to write rows, for every writer",
    "ratingloop.models.registry": "training runs, versions and evaluations: train, evaluate and the loop record "
                                  "into one registry",
    "ratingloop.models.embed": "the one sentence encoder (and its disk cache) that the signals' content model "
                               "and the embed reward model share",
    "ratingloop.train.scoring": "load_scorer: the one way to use a trained reward model (label, grpo, evaluate)",
}

HEAVY = ("torch", "transformers", "trl", "peft", "datasets")


# --- the graph -----------------------------------------------------------------------------------------

def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported ratingloop module, line) for each import in the module; `from pkg import sub` counts as sub
    when sub is a module, else as pkg."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names if a.name.split(".")[0] == "ratingloop")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] == "ratingloop":
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        found.append((sub if sub in MODULES else base, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


EDGES = {name: imports_of(name, path) for name, path in MODULES.items()}


def where(source: str, line: int) -> str:
    return f"{MODULES[source].relative_to(ROOT.parent)}:{line}"


def stage_of(name: str) -> str | None:
    """The stage package a module belongs to; None for a top-level module."""
    parts = name.split(".")
    if len(parts) >= 2 and f"ratingloop.{parts[1]}" in MODULES and MODULES[f"ratingloop.{parts[1]}"].name == \
            "__init__.py":
        return f"ratingloop.{parts[1]}"
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_shortest_cycle(edges, c) for c in components]


def _shortest_cycle(edges: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first, inside the component, until an edge leads back to the start
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


# --- the rules -------------------------------------------------------------------------------------------

def test_the_graph_is_read() -> None:
    """The walk sees the modules and the kinds of import it must (so an empty graph cannot pass the rules)."""
    assert {"ratingloop.cli", "ratingloop.train.run", "ratingloop.store.tables"} <= MODULES.keys()
    assert "ratingloop.store.tables" in {t for t, _ in EDGES["ratingloop.train.label"]}  # `from store import tables`
    assert any(t == "ratingloop.train.embed_reward" for t, _ in EDGES["ratingloop.train.scoring"])  # in a function
    assert stage_of("ratingloop.train.reward") == "ratingloop.train" and stage_of("ratingloop.cli") is None
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    edges = {name: {t for t, _ in targets} for name, targets in EDGES.items()}
    found = cycles(edges)
    lines = []
    for cycle in found:
        steps = []
        for a, b in pairwise(cycle):
            line = min(n for t, n in EDGES[a] if t == b)
            steps.append(f"{a} -> {b} ({where(a, line)})")
        lines.append("; ".join(steps))
    assert not found, "import cycles (move what both sides need into a module of its own):\n  " + "\n  ".join(lines)


def test_stages_meet_only_through_packages_and_public_modules() -> None:
    wrong = []
    for name, targets in EDGES.items():
        stage = stage_of(name)
        if stage is None:
            continue  # an entry point or the shared base
        for target, line in targets:
            other = stage_of(target)
            if other == stage or target in SHARED or target in PUBLIC or target == other:
                continue
            if other is None:
                wrong.append(f"{where(name, line)}: {name} imports the entry point {target}; stages never do")
            else:
                wrong.append(f"{where(name, line)}: {name} imports {target}, inside the {other} stage; import "
                             f"it from {other} (export it there) or, if it is public by design, add it to PUBLIC "
                             "with a reason")
    assert not wrong, "reach-ins across stages:\n  " + "\n  ".join(sorted(wrong))


def test_public_modules_exist() -> None:
    missing = sorted(set(PUBLIC) - MODULES.keys())
    assert not missing, f"PUBLIC names modules that are gone: {missing}; remove them"


def test_the_cli_and_every_stage_package_import_without_torch() -> None:
    """`ratingloop --help` and `import ratingloop.<stage>` stay cheap: the heavy libraries load inside the
    functions that train, generate or evaluate. Packages are imported one after another in one process;
    the first that brings a heavy library in is named."""
    packages = ["ratingloop.cli"] + sorted(n for n, p in MODULES.items() if n.count(".") == 1
                                           and p.name == "__init__.py")
    code = (
        "import importlib, sys\n"
        f"heavy = {HEAVY!r}\n"
        f"for name in {packages!r}:\n"
        "    importlib.import_module(name)\n"
        "    loaded = [m for m in heavy if m in sys.modules]\n"
        "    if loaded:\n"
        "        print(name, ','.join(loaded))\n"
        "        sys.exit(1)\n"
        "from ratingloop.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "print('ratingloop --help', ','.join(loaded), file=sys.stderr)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing pulled in a heavy library: {proc.stdout.strip()} {proc.stderr[-2000:]}"

