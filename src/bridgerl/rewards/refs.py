"""A user's reward function by reference: 'package.module:function' or 'path/to/file.py:function'.

Loaded in the process that scores, or in a guarded worker (bridgerl.rewards.guard) from the same
reference. The reference is parsed by `bridgerl.core.refs.split_ref`, the one parser of
`rewards.terms.N.function` (the worker imports no configuration).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from bridgerl.core.refs import split_ref


class TermError(ValueError):
    """A term's function cannot be used; the message says why (the caller names the key)."""


def load_ref(ref: str, base: Path | None = None, builtins: tuple[str, ...] = ()) -> Callable:
    """The function `ref` names: 'package.module:function' or 'path/to/file.py:function' (relative to `base`,
    default the working directory). `builtins`: the names a reference could have been instead (for the error)."""
    parsed = split_ref(ref)
    if parsed is None:
        raise TermError(f"not a built-in ({', '.join(builtins)}) nor 'module:function' / 'file.py:function'")
    target, name = parsed
    if target.endswith(".py"):
        path = Path(target) if base is None or Path(target).is_absolute() else base / target
        if not path.is_file():
            raise TermError(f"file not found: {path}")
        mod_name = f"bridgerl_user_reward_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)  # loaded once per process, as an imported module is
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                sys.modules.pop(mod_name, None)
                raise TermError(f"{path} failed to import: {type(e).__name__}: {e}") from e
    else:
        here = str(Path.cwd())
        if here not in sys.path:  # a module beside params.yaml (the console script's path does not hold it)
            sys.path.append(here)
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise TermError(f"module {target!r} not importable: {e}") from e
        except Exception as e:
            raise TermError(f"module {target!r} failed to import: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if fn is None:
        raise TermError(f"{target} has no function {name!r}")
    if not callable(fn):
        raise TermError(f"{target}:{name} is a {type(fn).__name__}, not a function")
    return fn
