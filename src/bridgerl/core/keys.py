"""Dotted configuration keys (`train.bridge.lam`): the one place that walks them.

A key addresses a value in a nested mapping (a YAML/JSON configuration), or an attribute path in a
validated `Config`. Reading, writing and flattening all go through these functions.
"""

from __future__ import annotations

from typing import Any

MISSING: Any = object()  # what `get` returns for a key that is not there (without a default)


def parts(key: str | list[str] | tuple[str, ...]) -> list[str]:
    """`a.b.c` → ['a', 'b', 'c'] (a list is returned as it is)."""
    return list(key) if isinstance(key, (list, tuple)) else str(key).split(".")


def get(tree: Any, key: str | list[str], default: Any = MISSING) -> Any:
    """The value at `key` in nested mappings (list items by index); `default` when a part is missing."""
    node = tree
    for part in parts(key):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return default
    return node


def get_attr(obj: Any, key: str | list[str]) -> Any:
    """`obj.a.b` for key `a.b` (reads only that key of a Config, unlike a dump of the whole of it)."""
    for part in parts(key):
        obj = getattr(obj, part)
    return obj


def put(tree: dict, key: str | list[str], value: Any) -> None:
    """Set `key` in nested mappings, creating missing sections; ValueError naming the key when a part on the
    way is a value, not a section."""
    *parents, last = parts(key)
    node = tree
    for part in parents:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"{'.'.join(parts(key))}: '{part}' is not a section")
        node = nxt
    node[last] = value


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → {dotted key: leaf value} (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def covers(prefix: str, key: str) -> bool:
    """Whether `prefix` and `key` overlap: equal, or one is a section containing the other."""
    return key == prefix or key.startswith(prefix + ".") or prefix.startswith(key + ".")
