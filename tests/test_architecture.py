"""The layers of docs/architecture.md hold: no import circle, arrows one way, a cheap ``import uniap``.

Imports are read from the source (every ``import`` statement, at module level or inside a
function, except those under ``if TYPE_CHECKING:``, which never run), so a lazy import that
would close a circle counts as much as an eager one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("uniap", "uniap_train")


def module_files() -> dict[str, Path]:
    """Every module of uniap and uniap_train by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its source.

    ``from package import name`` counts as importing ``package.name`` when that is a module,
    else ``package``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for other in child.orelse:
                    walk_one(other)
            else:
                walk_one(child)

    def walk_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
        else:
            walk(node)

    walk(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_walker_reads_lazy_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n"
        "def f():\n    from . import b\n    from .b import g\n")
    modules = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.b": package / "b.py",
               "pkg.c": package / "c.py"}
    assert imports_of("pkg.a", package / "a.py", modules) == {"pkg.b"}


def test_no_import_circle_in_uniap_or_uniap_train(graph):
    assert cycles(graph) == []


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for other in graph[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# Hierarchy.to_records, the README's one-line way to mask records, is the one arrow out of the
# core: a call-time import of uniap.records, which itself imports only uniap.core.graph.
CORE_EXCEPTIONS = {("uniap.core.hierarchy", "uniap.records")}


def test_the_core_imports_no_outer_layer(graph):
    outer = ("uniap.features", "uniap.pipeline", "uniap.records", "uniap.io", "uniap.formats",
             "uniap.evaluation", "uniap.segmenters", "uniap.cli", "uniap.merge", "uniap.viz",
             "uniap.superpixels", "uniap.metrics", "uniap_train")
    bad = [(m, o) for m in graph if _under(m, ("uniap.core",)) for o in graph[m]
           if _under(o, outer) and (m, o) not in CORE_EXCEPTIONS]
    assert bad == []
    assert all(_under(o, ("uniap.core", "uniap.backends")) for o in _reaches(graph, "uniap.core")
               - {o for _, o in CORE_EXCEPTIONS} - _reaches(graph, "uniap.records"))


def test_backends_import_nothing_of_cli_io_or_pipeline(graph):
    for module in (m for m in graph if _under(m, ("uniap.backends",))):
        assert not [o for o in graph[module] if not _under(o, ("uniap.backends", "uniap.core"))], module


def test_uniap_never_imports_uniap_train(graph):
    assert not [(m, o) for m in graph if _under(m, ("uniap",)) for o in graph[m] if _under(o, ("uniap_train",))]


def test_inner_layers_never_import_the_package_root(graph):
    """``from .. import name`` in a submodule runs ``uniap/__init__.py`` from below: an upward
    arrow (the version lives in ``uniap._version``)."""
    assert not [m for m in graph if m.startswith("uniap.") and "uniap" in graph[m]]


def test_formats_and_io_import_no_pipeline_or_command(graph):
    """Formats are below the pipeline: the pipeline, the planner and the commands read them."""
    for top in ("uniap.io", "uniap.formats"):
        assert not [o for o in _reaches(graph, top)
                    if _under(o, ("uniap.pipeline", "uniap.cli", "uniap.merge", "uniap.features"))], top


def test_import_uniap_is_cheap():
    """``import uniap`` loads the core alone: no SciPy, features, pipeline, records or formats."""
    code = ("import sys, json, uniap; print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('uniap', 'scipy', 'numba', 'torch', 'PIL', 'pycocotools'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True, cwd=ROOT).stdout)
    heavy = [m for m in loaded if not _under(m, ("uniap", "uniap.core", "uniap.backends", "uniap._version"))]
    assert heavy == []
    assert "uniap.core.api" in loaded


def test_old_module_paths_read_the_moved_modules():
    import uniap.api
    import uniap.core
    import uniap.engine
    import uniap.evaluation.runner
    import uniap.evaluation.scoring
    import uniap.graph
    import uniap.hierarchy
    import uniap.options

    assert uniap.engine.run_levels is uniap.core.levels.run_levels
    assert uniap.engine.PROFILE_BYTES == uniap.core.levels.PROFILE_BYTES
    assert uniap.hierarchy.Hierarchy is uniap.core.hierarchy.Hierarchy
    assert uniap.hierarchy.nearest_index is uniap.core.graph.nearest_index
    assert uniap.api.segment is uniap.core.api.segment and uniap.graph.Graph is uniap.core.graph.Graph
    assert uniap.options.resolve_options is uniap.core.options.resolve_options
    assert uniap.evaluation.runner.evaluate is uniap.evaluation.scoring.evaluate
    assert "run_levels" in dir(uniap.engine)
    from uniap.engine import _initial_profiles  # private names too (PEP 562)

    assert _initial_profiles is uniap.core.levels._initial_profiles
    with pytest.raises(AttributeError):
        uniap.engine.nope  # noqa: B018
    assert uniap.segment_image is __import__("uniap.pipeline.image", fromlist=["x"]).segment_image
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        uniap.nope  # noqa: B018


def test_old_uniap_train_paths_read_the_moved_modules():
    pytest.importorskip("torch")
    import uniap_train.decoder
    import uniap_train.loss
    import uniap_train.matching
    import uniap_train.model
    from uniap_train.recipes import paper, released

    assert uniap_train.decoder.PaperModel is paper.model.PaperModel
    assert uniap_train.matching.hungarian is paper.loss.hungarian
    assert uniap_train.loss.QuerySDLoss is released.loss.QuerySDLoss
    assert uniap_train.model.ema_update is released.model.ema_update
