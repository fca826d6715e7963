"""The MLflow model registry: bounded retries, registration bookkeeping, gated promotion, rollback.

Owns everything `bridgerl register | promote | rollback` does to the registered model
`registry.model_name` (MLflow 3 aliases, never stages):

- Retries. Every registry call goes through `client.call()` (bounded retries, bridgerl.tracking.client).
- Registration state. A version is created with all its provenance tags plus
  `bridgerl.registration_key` (a hash of the model's files and its evaluation metrics: the same
  model with the same evaluation is the same registration, whatever else changed) and `bridgerl.state=pending`;
  it becomes `complete` only after alias `challenger` points at it. A rerun of the same
  registration finds the pending version by its key and completes it instead of creating another;
  other pending versions older than `registry.pending_grace_s` (abandoned registrations) are deleted.
- One version per registration. The registry has no create-if-absent, so two registrations of the same
  key at once can both create a version; each then settles on the same one (the champion if one of
  them is, else the lowest-numbered) and deletes the others (`settle_duplicates`), so they converge on
  one version whichever finishes first, and a rerun removes a duplicate left by older code.
- Repair. A register killed mid-way leaves its MLflow run RUNNING and perhaps a logged model no version
  uses; every register (and `bridgerl register --repair`) marks such runs KILLED and deletes such logged
  models once they are older than `registry.pending_grace_s` or their process (on this host) is gone
  (`clean_abandoned`). Both carry the tags `bridgerl.registered_model`, `bridgerl.host` and
  `bridgerl.pid` from the moment they are created, so that they can be found.
- Promotion. `promote()` moves alias `champion` to a version only if its `metric.<registry.metric>`
  tag beats the champion's by `registry.margin` (`--force` overrides and is recorded).
- History. Each promotion/rollback is a tag `bridgerl.history.<ns timestamp>` (JSON) on the
  registered model; replaying them gives the stack of champions that `rollback()` pops.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any, Callable

from bridgerl.config import Config
from bridgerl.tracking.client import RegistryError, RegistryUnavailable, call, connect, http_settings, not_found, quote
from bridgerl.tracking.runs import tracking_uri

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
KEY_TAG = "bridgerl.registration_key"
REGISTERED_TAG = "bridgerl.registered_model"  # on register runs and the models they log: for which registered model
HOST_TAG, PID_TAG = "bridgerl.host", "bridgerl.pid"  # ... and which process made them
STATE_TAG = "bridgerl.state"
PENDING, COMPLETE = "pending", "complete"
HISTORY_PREFIX = "bridgerl.history."
METRIC_TAG_PREFIX = "metric."


class PromotionRefused(RegistryError):
    """The promotion gate said no; `details` holds both metric values."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


# --------------------------------------------------------------------------------------------
# registration bookkeeping
# --------------------------------------------------------------------------------------------
def find_versions(mlc, name: str, key: str) -> list:
    """The versions of `name` created by the registration `key`, lowest number first."""
    found = mlc.search_model_versions(f"name = '{quote(name)}' and tags.`{KEY_TAG}` = '{quote(key)}'")
    return sorted(found, key=lambda v: int(v.version))


def find_version(mlc, name: str, key: str):
    """The version of `name` created by the registration `key`, or None."""
    found = find_versions(mlc, name, key)
    return found[0] if found else None


def model_id(mv) -> str | None:
    """The logged model a version was made from (MLflow 3): the field, or its `models:/<id>` source (some
    stores' search answers leave the field empty)."""
    mid = getattr(mv, "model_id", None)
    if mid:
        return mid
    src = str(getattr(mv, "source", "") or "")
    return src[len("models:/"):].split("/")[0] if src.startswith("models:/m-") else None


def _gone(fn: Callable, *args) -> None:
    """Delete something that a concurrent registration may have deleted first."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - only "not found" is expected; anything else is raised
        if not not_found(e):
            raise


def settle_duplicates(cfg: Config, mlc, mv) -> tuple[Any, list[str]]:
    """The one version the registration of `mv` keeps, and the duplicates of it deleted.

    Every version tagged with `mv`'s registration key is a candidate; the one kept is the `champion`
    among them if any (a promoted duplicate stays), else the lowest-numbered. Two registrations racing
    both reach this after creating their versions and agree on the one kept, so they converge on one
    version; deleting a version another racer deleted first is not an error.
    """
    name, key = mv.name, mv.tags.get(KEY_TAG)
    found = call(cfg, f"list the versions of {name} with this registration", find_versions, mlc, name, key)
    if len(found) <= 1:
        return (found[0] if found else mv), []
    rm = call(cfg, f"read registered model {name}", mlc.get_registered_model, name)
    champion = aliases(rm).get(CHAMPION)
    keep = next((v for v in found if str(v.version) == champion), found[0])
    deleted = []
    for v in found:
        if str(v.version) == str(keep.version):
            continue
        log.warning("deleting version %s of %s: a duplicate of version %s (the same registration, %s=%s)",
                    v.version, name, keep.version, KEY_TAG, key)
        call(cfg, f"delete duplicate version {v.version}", _gone, mlc.delete_model_version, name, v.version)
        if model_id(v) and model_id(v) != model_id(keep):
            call(cfg, f"delete the logged model of version {v.version}", _gone, mlc.delete_logged_model, model_id(v))
        deleted.append(str(v.version))
    return keep, deleted


def owner_tags(name: str) -> dict[str, str]:
    """Tags on a register run and the model it logs from their creation: the registered model they are for,
    and the host and process doing it (so that a later register knows when that process is gone)."""
    return {REGISTERED_TAG: name, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _abandoned(tags: dict, created_ms: int, cutoff_ms: float) -> bool:
    """Older than the grace period, or made by a process of this host that no longer exists."""
    if created_ms <= cutoff_ms:
        return True
    if tags.get(HOST_TAG) != socket.gethostname() or not str(tags.get(PID_TAG, "")).isdigit():
        return False
    pid = int(tags[PID_TAG])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _logged_models(mlc, experiment_ids: list[str], flt: str) -> list:
    out, token = [], None
    while True:
        page = mlc.search_logged_models(experiment_ids, filter_string=flt, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def clean_abandoned(cfg: Config, mlc, experiment_ids: list[str]) -> dict:
    """Repair what killed registers left: their runs still RUNNING are marked KILLED, and the models they
    logged that no version uses are deleted; "killed" = older than registry.pending_grace_s, or made by
    a process of this host that is gone (a registration in progress elsewhere is younger than the grace).
    Returns {"killed_runs": [...], "deleted_models": [...]}."""
    name = cfg.registry.model_name
    cutoff_ms = (time.time() - cfg.registry.pending_grace_s) * 1000
    tagged = f"tags.`{REGISTERED_TAG}` = '{quote(name)}'"
    runs = call(cfg, f"list unfinished register runs of {name}", mlc.search_runs, experiment_ids,
                f"{tagged} and attributes.status = 'RUNNING'")
    killed = []
    for r in runs:
        if _abandoned(r.data.tags, r.info.start_time, cutoff_ms):
            log.warning("marking register run %s KILLED (started %s, never finished)", r.info.run_id,
                        _iso(r.info.start_time / 1000))
            call(cfg, f"end run {r.info.run_id}", mlc.set_terminated, r.info.run_id, "KILLED")
            killed.append(r.info.run_id)
    used = {model_id(v) for v in call(cfg, f"list versions of {name}", mlc.search_model_versions,
                                                       f"name = '{quote(name)}'")}
    models = call(cfg, f"list models logged for {name}", _logged_models, mlc, experiment_ids, tagged)
    deleted = []
    for m in models:
        if m.model_id not in used and _abandoned(m.tags, m.creation_timestamp, cutoff_ms):
            log.warning("deleting logged model %s (logged %s for %s; no version uses it)", m.model_id,
                        _iso(m.creation_timestamp / 1000), name)
            call(cfg, f"delete logged model {m.model_id}", _gone, mlc.delete_logged_model, m.model_id)
            deleted.append(m.model_id)
    return {"killed_runs": killed, "deleted_models": deleted}


def complete_version(cfg: Config, mlc, mv, tags: dict[str, str]):
    """Give `mv` any missing provenance tag, point `challenger` at it, then mark it complete.

    The alias is moved only after the tags are in place, so it always points at a version with its
    full provenance; `complete` comes last, so an interruption anywhere leaves `pending` for a rerun.
    """
    name, v = mv.name, str(mv.version)
    for k, val in tags.items():
        if k not in mv.tags:
            call(cfg, f"tag version {v} of {name}", mlc.set_model_version_tag, name, v, k, str(val))
    call(cfg, f"set alias {CHALLENGER} on version {v} of {name}", mlc.set_registered_model_alias, name, CHALLENGER, v)
    call(cfg, f"mark version {v} of {name} complete", mlc.set_model_version_tag, name, v, STATE_TAG, COMPLETE)
    return call(cfg, f"read version {v} of {name}", mlc.get_model_version, name, v)


def clean_stale(cfg: Config, mlc, keep_version: str | None) -> list[str]:
    """Delete pending versions (other than `keep_version`) older than registry.pending_grace_s: abandoned
    registrations, or a duplicate left by two runs of the same registration racing."""
    name = cfg.registry.model_name
    pending = call(cfg, f"list pending versions of {name}", mlc.search_model_versions,
                   f"name = '{quote(name)}' and tags.`{STATE_TAG}` = '{PENDING}'")
    cutoff_ms = (time.time() - cfg.registry.pending_grace_s) * 1000
    deleted = []
    for mv in pending:
        if str(mv.version) != str(keep_version) and mv.creation_timestamp <= cutoff_ms:
            log.warning("deleting half-registered version %s of %s (created %s, never completed)", mv.version, name,
                        _iso(mv.creation_timestamp / 1000))
            call(cfg, f"delete half-registered version {mv.version}", mlc.delete_model_version, name, mv.version)
            deleted.append(str(mv.version))
    return deleted


# --------------------------------------------------------------------------------------------
# promotion, history, rollback
# --------------------------------------------------------------------------------------------
def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def aliases(rm) -> dict[str, str]:
    """alias -> version as a string: the SQLite store answers ints, the REST API strings."""
    return {a: str(v) for a, v in (rm.aliases or {}).items()}


def _registered_model(cfg: Config, mlc):
    name = cfg.registry.model_name
    try:
        return call(cfg, f"read registered model {name}", mlc.get_registered_model, name)
    except RegistryError as e:
        if not_found(e):
            raise RegistryError(f"registry.model_name = {name!r}: no such registered model at {tracking_uri(cfg)} "
                                f"(run `bridgerl register` first)") from None
        raise


def _version(cfg: Config, mlc, version: str):
    name = cfg.registry.model_name
    try:
        return call(cfg, f"read version {version} of {name}", mlc.get_model_version, name, str(version))
    except RegistryError as e:
        if not_found(e):
            raise RegistryError(f"registered model {name!r} has no version {version}") from None
        raise


def history(cfg: Config, mlc=None, rm=None) -> list[dict]:
    """Promotion/rollback events recorded on the registered model, oldest first."""
    rm = rm or _registered_model(cfg, mlc or connect(cfg))
    events = []
    for k in sorted(t for t in rm.tags if t.startswith(HISTORY_PREFIX)):
        try:
            events.append(json.loads(rm.tags[k]))
        except json.JSONDecodeError:
            log.warning("ignoring unreadable history tag %s on %s", k, rm.name)
    return events


def champion_stack(events: list[dict]) -> list[str]:
    """Replay the history: a promotion pushes its version, a rollback returns to its version."""
    stack: list[str] = []
    for ev in events:
        v = str(ev.get("version"))
        if ev.get("action") == "rollback" and v in stack:
            del stack[len(stack) - stack[::-1].index(v):]
        else:
            stack.append(v)
    return stack


def _record(cfg: Config, mlc, event: dict) -> None:
    event = {**event, "at": _iso(time.time()), "user": _user()}
    key = f"{HISTORY_PREFIX}{time.time_ns():020d}"
    call(cfg, "record the promotion history", mlc.set_registered_model_tag, cfg.registry.model_name, key,
         json.dumps(event, sort_keys=True))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return "unknown"


def metric_of(mv, metric: str) -> float | None:
    raw = (mv.tags or {}).get(METRIC_TAG_PREFIX + metric)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def beats(value: float, champion: float, margin: float) -> bool:
    """Strictly better, and by at least `margin` (with a float tolerance of 1e-9)."""
    return value > champion and value - champion >= margin - 1e-9


def promote(cfg: Config, version: str | None = None, force: bool = False, mlc=None) -> dict:
    """Move `champion` to `version` (default: the challenger) if it passes the gate, or with force."""
    r = cfg.registry
    name, metric = r.model_name, r.metric
    with http_settings(cfg):
        mlc = mlc or connect(cfg)
        rm = _registered_model(cfg, mlc)
        if version is None:
            if CHALLENGER not in rm.aliases:
                raise RegistryError(f"registered model {name!r} has no alias {CHALLENGER!r}: pass --version or "
                                    f"run `bridgerl register` first")
            version = aliases(rm)[CHALLENGER]
        mv = _version(cfg, mlc, str(version))
        v = str(mv.version)
        if mv.tags.get(STATE_TAG) == PENDING:
            raise RegistryError(f"version {mv.version} of {name} is half-registered ({STATE_TAG}={PENDING}); "
                                f"rerun `bridgerl register` to complete it before promoting")
        events = history(cfg, rm=rm)
        current = aliases(rm).get(CHAMPION)
        value = metric_of(mv, metric)
        details = {"name": name, "version": v, "metric": metric, "value": value, "margin": r.margin,
                   "champion_version": current, "champion_value": None, "forced": force, "promoted": False}
        if current == v:
            stack = champion_stack(events)
            if not stack or stack[-1] != v:  # an earlier promote was cut off before recording
                _record(cfg, mlc, {"action": "promote", "version": v, "previous": None, "metric": metric,
                                   "value": value, "note": "recorded after an interrupted promotion"})
            return {**details, "champion_value": value, "reason": "already champion"}
        champ = _version(cfg, mlc, current) if current else None
        champ_value = metric_of(champ, metric) if champ else None
        details["champion_value"] = champ_value
        reason = None
        if value is None:
            reason = f"version {mv.version} has no numeric tag {METRIC_TAG_PREFIX}{metric} (registry.metric)"
        elif r.min_metric is not None and value < r.min_metric:
            reason = f"{metric} of version {mv.version} = {value:.4f} is below registry.min_metric = {r.min_metric:.4f}"
        elif champ is not None and champ_value is None:
            reason = f"champion version {current} has no numeric tag {METRIC_TAG_PREFIX}{metric} to compare with"
        elif champ is not None and not beats(value, champ_value, r.margin):
            reason = (f"{metric} of version {mv.version} = {value:.4f} does not beat champion version {current} "
                      f"= {champ_value:.4f} by registry.margin = {r.margin}")
        if reason and not force:
            raise PromotionRefused(f"{reason} (use --force to override)", {**details, "reason": reason})
        call(cfg, f"set alias {CHAMPION} on version {mv.version} of {name}", mlc.set_registered_model_alias, name,
             CHAMPION, mv.version)
        event = {"action": "promote", "version": v, "previous": current, "metric": metric, "value": value,
                 "champion_value": champ_value, "margin": r.margin, "forced": force}
        if force:
            event["overrode"] = reason or "nothing (the gate passed)"
            call(cfg, f"tag version {mv.version} as force-promoted", mlc.set_model_version_tag, name, mv.version,
                 "bridgerl.forced_promotion", json.dumps({"at": _iso(time.time()), "overrode": event["overrode"]}))
        _record(cfg, mlc, event)
        now = aliases(call(cfg, f"read registered model {name}", mlc.get_registered_model, name)).get(CHAMPION)
        return {**details, "promoted": True, "reason": reason or "passed the gate", "champion": now}


def rollback(cfg: Config, mlc=None) -> dict:
    """Move `champion` back to the champion before the current one (repeatable down the history)."""
    name = cfg.registry.model_name
    with http_settings(cfg):
        mlc = mlc or connect(cfg)
        rm = _registered_model(cfg, mlc)
        current = aliases(rm).get(CHAMPION)
        stack = champion_stack(history(cfg, rm=rm))
        while stack and stack[-1] == current:
            stack.pop()
        target = None
        while stack:
            cand = stack.pop()
            try:
                _version(cfg, mlc, cand)
            except RegistryUnavailable:
                raise
            except RegistryError:
                log.warning("previous champion version %s of %s no longer exists; skipping it", cand, name)
                continue
            target = cand
            break
        if target is None:
            raise RegistryError(f"registered model {name!r}: no previous champion to roll back to "
                                f"(current champion: {current or 'none'})")
        call(cfg, f"set alias {CHAMPION} on version {target} of {name}", mlc.set_registered_model_alias, name,
             CHAMPION, target)
        _record(cfg, mlc, {"action": "rollback", "version": target, "previous": current})
        return {"name": name, "champion": target, "previous": current}
