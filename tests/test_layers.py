"""The package's import graph: no circle, and no import that climbs against the layers (docs/architecture.md).

Every import counts, at the top of a module or inside a function: a function-level import that climbs is
still a dependency the layering hides. The graph comes from the same analyser that computes the stages'
DVC code dependencies (bridgerl.codegen.imports).
"""

from __future__ import annotations

from bridgerl.codegen.imports import PACKAGE_DIR, graph

# bottom to top: a module may import its own package and the packages below it, nothing above
LAYERS = ["core", "config", "tasks", "model", "data", "rewards", "rollout", "train", "demos", "evaluation",
          "tracking", "comparison", "stages", "launch", "codegen", "cli"]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(module: str) -> int:
    pkg = _package(module)
    if pkg in ("", "__main__"):  # bridgerl/__init__.py (the version) and `python -m bridgerl` (calls cli)
        return -1 if pkg == "" else len(LAYERS)
    return LAYERS.index(pkg)


def test_every_module_lives_in_a_layer():
    """No module at the package root besides __init__/__main__; every subpackage has its place in LAYERS."""
    packages = {_package(m) for m in graph()}
    assert packages - {"", "__main__"} == set(LAYERS)
    assert sorted(p.name for p in PACKAGE_DIR.glob("*.py")) == ["__init__.py", "__main__.py"]


def test_no_import_climbs_the_layers():
    climbs = [f"{m} -> {i}" for m, deps in graph().items() for i in deps
              if _package(i) != _package(m) and _rank(i) > _rank(m)]
    assert not climbs, "imports against the layers:\n" + "\n".join(climbs)


def test_no_import_circle():
    g = graph()
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for i in sorted(g.get(m, ())):
            if state.get(i) == "open":
                cycles.append(" -> ".join([*path[path.index(i):], i]))
            elif i not in state:
                visit(i, [*path, i])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_analyser_sees_function_level_imports():
    """The check is only as good as the graph: an import inside a function is an edge, `from pkg import module`
    is an edge to the module."""
    from bridgerl.codegen import imports

    assert "bridgerl.launch.local" in imports.imports(PACKAGE_DIR / "cli" / "main.py")  # inside main()
    assert "bridgerl.model.source" in imports.imports(PACKAGE_DIR / "stages" / "resolve_config.py")  # in a function
    assert "bridgerl.tracking.client" in imports.imports(PACKAGE_DIR / "stages" / "register.py")  # from pkg import mod
