"""The code each stage runs, from its module's imports: the stages' DVC code dependencies, and the import
graph the layering test reads (tests/test_layers.py).

`imports(path)` reads a module's imports within bridgerl (top level and inside functions; `from pkg import
name` is the submodule when `name` is one, else the package), `import_closure` follows them transitively,
`code_deps` turns a stage's closure into DVC dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

from bridgerl.core.stage_table import Stage

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/bridgerl

# --------------------------------------------------------------------------------------------
# code dependencies
# --------------------------------------------------------------------------------------------
def _module_file(mod: str) -> Path | None:
    if mod != "bridgerl" and not mod.startswith("bridgerl."):
        return None
    rel = Path(*mod.split(".")[1:])
    for cand in (PACKAGE_DIR / rel / "__init__.py", (PACKAGE_DIR / rel).with_suffix(".py")):
        if cand.is_file():
            return cand
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = ["bridgerl", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules within bridgerl that `path` imports anywhere (top level or inside functions): `import a.b`
    is a.b; `from pkg import name` is pkg.name when that is a module, else pkg."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.add(sub if _module_file(sub) is not None else mod)
    return {m for m in found if _module_file(m) is not None}


def graph() -> dict[str, set[str]]:
    """Every bridgerl module → the bridgerl modules it imports."""
    return {module_name(f): imports(f) for f in sorted(PACKAGE_DIR.rglob("*.py"))}


def import_closure(module: str) -> list[Path]:
    """Files of every bridgerl module `module` imports, transitively, with their packages' __init__."""
    todo, seen = [module], set()
    files: set[Path] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
            f = _module_file(".".join(parts[:i]))
            if f is not None and f not in files:
                files.add(f)
                todo.extend(imports(f))
    return sorted(files)


def code_deps(stage: Stage | str) -> list[str]:
    """The code of a stage (or of a module, by name) as DVC dependencies (paths like `src/bridgerl/rewards`): a
    package directory when it imports all the package's modules, else the files. The package's own
    __init__.py (the version) is left out."""
    root = PACKAGE_DIR.parents[1]
    module = stage if isinstance(stage, str) else stage.module
    files = {f for f in import_closure(module) if f != PACKAGE_DIR / "__init__.py"}
    out: list[Path] = []
    for d in sorted({f.parent for f in files}):
        mine = {f for f in files if f.parent == d}
        if d != PACKAGE_DIR and mine == set(d.glob("*.py")) and not any(x.is_dir() and x.name != "__pycache__"
                                                                          for x in d.iterdir()):
            out.append(d)
        else:
            out.extend(sorted(mine))
    return sorted(str(p.relative_to(root)) for p in out)
