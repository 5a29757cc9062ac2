"""The package's layers: library modules compute and import no pipeline stage; no module imports in a circle.

Read from the source (every module's AST, `ast.walk`, so an import inside a function counts as much as one
at the top): the import graph of `dyneval/`.

The two lists (every module of the package is in exactly one):

- STAGES run a pipeline stage or a command -- they read and write run folders, launch processes, print --
  and may import anything: `__main__`, `train`, `export`, `evaluate_stage` (the evaluate command over one
  artifact), `legality` (the legality command), `report`, `notebook`, `reproduce`, `bench`, `parity`, and
  `sweep`.
- LIBRARY modules compute (model, optimizers, quantizer, scoring and adaptation, the variant registry,
  statistics, figures, data, configuration, the run folder's paths, collectives, compilation, threads, files).
  They import library modules only, and only downwards: LIBRARY maps each to its layer, and a module imports
  modules of its own layer or below. So the pure quantizer (layer 2) cannot reach for scoring (layer 3), and
  the variant registry cannot write run tables through `report`.

A module named in neither list fails `test_every_module_is_a_stage_or_a_library_module`: give it a place here.
Modules listed but not (yet) in the package are tolerated (`stats` and `figures` come with the report split).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dyneval"

STAGES = {"__main__", "train", "export", "evaluate_stage", "legality", "report", "notebook", "reproduce", "bench",
          "parity", "sweep"}

LIBRARY = {
    # 0: files, threads, collectives, and the run folder's layout
    "files": 0, "cpu": 0, "distributed": 0, "runfolder": 0, "__init__": 0,
    # 1: configuration (the stage dataclasses and coercion, presets, the environment shim, resolution)
    "sections": 1, "presets": 1, "environ": 1, "config": 1,
    # 2: what a run is made of: data, the model, the quantizer and artifact format; the published run
    "data": 2, "corpus": 2, "graphs": 2, "model": 2, "quant": 2, "published_run": 2,
    # 3: optimizers and scoring
    "optim": 3, "evaluate": 3,
    # 4: adaptation while scoring
    "adapt": 4, "doc_ttt": 4,
    # 5: the variant registry, statistics over results, a run previewed before it trains
    "variants": 5, "stats": 5, "preview": 5,
    # 6: figures of those statistics
    "figures": 6,
}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def package_imports(name: str, tree: ast.Module) -> set[str]:
    """The package modules `name` imports, anywhere in its source: `from . import x`, `from .x import y`,
    `from dyneval.x import y`, `import dyneval.x`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 0 and not (base == "dyneval" or base.startswith("dyneval.")):
                continue
            base = base.removeprefix("dyneval").lstrip(".") if node.level == 0 else base
            if base:
                found.add(base.split(".")[0])
            else:  # from . import a, b
                found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dyneval."))
    return found - {name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: package_imports(n, t) & set(mods) for n, t in mods.items()}


def test_every_module_is_a_stage_or_a_library_module(graph):
    assert not STAGES & set(LIBRARY)
    unplaced = sorted(set(graph) - STAGES - set(LIBRARY))
    assert not unplaced, f"{unplaced}: add them to STAGES or LIBRARY in tests/test_layers.py"


def test_no_library_module_imports_a_stage_module_even_inside_a_function(graph):
    bad = sorted(f"{m} imports {s}" for m in graph if m in LIBRARY for s in graph[m] if s in STAGES)
    assert not bad, bad


def test_library_modules_import_only_their_own_layer_or_below(graph):
    bad = sorted(f"{m} (layer {LIBRARY[m]}) imports {s} (layer {LIBRARY[s]})" for m in graph if m in LIBRARY
                 for s in graph[m] if s in LIBRARY and LIBRARY[s] > LIBRARY[m])
    assert not bad, bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_modules_of_the_package_import_each_other_in_a_circle(graph):
    assert import_cycles(graph) == []


def test_the_import_reader_sees_imports_inside_functions_and_the_cycle_finder_sees_circles():
    src = "def f():\n    from . import train\n    from .report import x\n    import dyneval.model\n"
    assert package_imports("variants", ast.parse(src)) == {"train", "report", "model"}
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
