"""Every public name of ``uniap``, ``uniap.features``, ``uniap.metrics`` and ``uniap_train`` has
a NumPy-style docstring with the sections it needs (issue #14).

"Public" is the module's ``__all__``.  Rules, checked by a small NumPy-docstring reader:

- every function and class has a docstring (not None: a docstring built as an expression is
  not assigned, and ``help()`` then shows only the signature);
- a ``Parameters`` section names every parameter of the signature (a class: of its
  constructor; ``Attributes`` counts for dataclasses and exceptions), except ``self``,
  ``*args``/``**kwargs`` and private ``_names``;
- a function whose return annotation is not None has ``Returns`` (or ``Yields``);
- the functions of the top-level ``uniap`` namespace have ``Examples`` (run by the doctests);
- a submodule listed in ``__all__`` has a module docstring.
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

MODULES = ["uniap", "uniap.features", "uniap.metrics", "uniap_train"]
NEEDS_EXAMPLES = {"uniap"}

_HEADER = re.compile(r"^([A-Z][A-Za-z ]+)\n-{3,}$", re.M)


def sections(doc: str) -> dict[str, str]:
    """Section title -> its body, of a cleaned (dedented) NumPy docstring."""
    heads = list(_HEADER.finditer(doc))
    return {m.group(1): doc[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(doc)]
            for i, m in enumerate(heads)}


def entry_names(body: str) -> set[str]:
    """Names of the entries (``name : type`` lines at the section's indentation)."""
    names: set[str] = set()
    for line in body.splitlines():
        if not line or line[0].isspace():
            continue
        head = line.split(" : ")[0].strip()
        for name in head.split(","):
            names.add(name.strip().lstrip("*"))
    return names


def public_objects():
    for modname in MODULES:
        module = importlib.import_module(modname)
        for name in module.__all__:
            yield pytest.param(modname, name, id=f"{modname}.{name}")


def _parameters(obj) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.name not in ("self", "cls") and not p.name.startswith("_")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@pytest.mark.parametrize("modname,name", list(public_objects()))
def test_public_name_has_a_numpy_docstring(modname, name):
    obj = getattr(importlib.import_module(modname), name)
    if inspect.ismodule(obj):
        assert obj.__doc__, f"module {obj.__name__} has no docstring"
        return
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return  # constants (DEFAULT_LEVELS, __version__, ...) are documented where they are defined
    assert obj.__doc__ is not None, f"{modname}.{name} has no docstring"
    doc = inspect.cleandoc(obj.__doc__)
    assert doc.strip(), f"{modname}.{name} has an empty docstring"
    found = sections(doc)
    params = _parameters(obj)
    if params:
        documented = entry_names(found.get("Parameters", ""))
        if inspect.isclass(obj):
            documented |= entry_names(found.get("Attributes", ""))
        missing = [p for p in params if p not in documented]
        assert not missing, f"{modname}.{name}: parameters not in its docstring: {missing}"
    if inspect.isfunction(obj):
        ret = inspect.signature(obj).return_annotation
        if ret not in (inspect.Signature.empty, None, "None"):
            assert {"Returns", "Yields"} & set(found), f"{modname}.{name} has no Returns section"
        if modname in NEEDS_EXAMPLES:
            assert "Examples" in found and ">>>" in found["Examples"], f"{modname}.{name} has no Examples"


def test_reader_sees_sections_and_entries():
    import uniap

    found = sections(inspect.cleandoc(uniap.segment.__doc__))
    assert {"Parameters", "Returns", "Raises", "Notes", "References", "Examples"} <= set(found)
    assert {"features", "levels", "channel_axis", "min_size", "exact"} <= entry_names(found["Parameters"])


def test_docstrings_are_assigned():
    # The regression of issue #14: the docstrings were expressions, so __doc__ was None.
    import uniap

    for func in (uniap.segment, uniap.segment_graph):
        assert func.__doc__ and "Parameters" in func.__doc__ and "{options}" not in func.__doc__
