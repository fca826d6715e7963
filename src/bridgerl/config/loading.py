"""Loading the configuration: defaults < preset < what params.yaml sets < `-S` overrides → `Config`.

An invalid value stops the command before any work starts, with an error naming the key and the value.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridgerl.config.base import ConfigError
from bridgerl.config.schema import Config
from bridgerl.core import keys

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.bridge.lam=0.3` → (['train', 'bridge', 'lam'], 0.3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in keys.parts(key)):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from e
    return keys.parts(key), value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    try:
        keys.put(raw, path, value)
    except ValueError as e:
        raise ConfigError(f"override {e}") from None


def _format_error(e: ValidationError, raw: dict, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        value = keys.get(raw, list(err["loc"]), "<missing>")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key} = {value!r}: {msg}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"configuration file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def resolve_preset(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = PRESET_DIR / f"{name}.yaml"
    if cand.exists():
        return cand
    known = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"preset = {name!r}: no such preset (known: {', '.join(known)})")


def read_preset(name: str, _seen: tuple[Path, ...] = ()) -> dict:
    """A preset's values; `extends: OTHER` (a preset name or path) layers the file over OTHER's values, so a
    variant states only what it changes."""
    path = resolve_preset(name)
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    chain = (*_seen, path.resolve())
    if resolve_preset(str(parent)).resolve() in chain:
        raise ConfigError(f"{path}: extends = {parent!r}: a preset cannot extend itself (chain: "
                          f"{' -> '.join(p.name for p in chain)} -> {parent})")
    return deep_merge(read_preset(str(parent), chain), data)


def user_written(params: dict) -> list[list[str]]:
    """The keys of a params file that the user set: leaves whose value differs from the default.

    params.yaml states every default (tests keep the shipped file equal to the schema defaults), so
    a leaf equal to its default says nothing and a preset may replace it; a leaf with any other
    value (edited by hand, by `dvc exp run -S`, in the Kubeflow UI's params text) is the user's.
    Values are compared after validation (`1e-6` and `0.000001` are the same number).
    """
    defaults = Config().model_dump(mode="json")
    try:
        validated: dict = Config.model_validate({k: v for k, v in params.items() if k != "preset"}).model_dump(mode="json")
    except ValidationError:
        validated = {}  # e.g. a file that is only valid with its preset: compare the raw values
    out = []
    for key in keys.flatten({k: v for k, v in params.items() if k != "preset"}):
        path = keys.parts(key)
        value = keys.get(validated, path)
        if value is keys.MISSING:
            value = keys.get(params, path)
        if value != keys.get(defaults, path):
            out.append(path)
    return out


def load_config(params: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = (),
                preset: str | None = None) -> Config:
    """defaults < preset < what params.yaml sets differently from the defaults < `-S` overrides → Config.

    The preset comes from the `preset:` key of params.yaml, the `preset` argument or a `-S preset=`
    override (the last one given wins). See `user_written` for which keys of params.yaml count as set.
    """
    raw: dict = {}
    origin = "defaults"
    if params is not None:
        p = Path(params)
        if p.exists():
            raw = read_yaml(p)
            origin = str(p)
        elif str(params) != "params.yaml":
            raise ConfigError(f"configuration file not found: {p}")
    parsed = [parse_override(o) for o in overrides]
    for path, value in parsed:  # a preset chosen by override applies before the others
        if path == ["preset"]:
            preset = value
    preset = preset or raw.get("preset")
    if preset:
        merged = deep_merge(raw, read_preset(str(preset)))
        for path in user_written(raw):  # what the user wrote wins over the preset
            apply_override(merged, path, copy.deepcopy(keys.get(raw, path)))
        raw = merged
        raw["preset"] = str(preset)
    for path, value in parsed:
        apply_override(raw, path, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, raw, origin)) from None
