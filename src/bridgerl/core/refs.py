"""References to a function by name: 'package.module:function' or 'path/to/file.py:function'.

The one parser of `rewards.terms.N.function`: the configuration reads it (a term's source file is a stage
dependency) and so does the reward loader (bridgerl.rewards.refs), also inside the guarded worker processes,
which is why it lives here, importing nothing, rather than with the configuration.
"""

from __future__ import annotations


def split_ref(ref: str) -> tuple[str, str] | None:
    """A reward function's reference, 'package.module:function' or 'path/to/file.py:function', as (module or
    file, function); None for a built-in's name (no ':'). The one parser of `rewards.terms.N.function`."""
    if ":" not in ref:
        return None
    target, name = ref.rsplit(":", 1)
    return target, name
