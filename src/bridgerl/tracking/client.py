"""The MLflow client every tracked stage uses, with bounded retries.

Every call to the tracking server goes through `call()`: a server that is down, slow or answering
5xx/429 is retried `registry.max_retries` times with exponential backoff from `registry.backoff_s`, each
HTTP request bounded by `registry.timeout_s`; then `RegistryUnavailable` names the server and the settings.
MLflow's own HTTP retries are switched off meanwhile (`http_settings`) so these keys are the whole budget.
`ensure_reachable` fails a command fast, before it writes anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from typing import Any, Callable, Iterator

from bridgerl.config import Config
from bridgerl.tracking.runs import init_local_store, tracking_uri

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class RegistryError(RuntimeError):
    """The registry refused or could not do an operation; the message says which and why."""


class RegistryUnavailable(RegistryError):
    """The tracking server did not answer within the configured retries."""


def connect(cfg: Config):
    """An MLflow client of the configured tracking server and registry (a local store is created when first used)."""
    from mlflow import MlflowClient

    init_local_store(cfg)
    uri = tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_http_lock = threading.Lock()
_http_depth = 0
_http_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def http_settings(cfg: Config) -> Iterator[None]:
    """Turn MLflow's internal HTTP retries off and bound each request by registry.timeout_s.

    MLflow reads these from the environment at each request; nested or concurrent uses (threads)
    share them and the previous values come back when the last one exits.
    """
    global _http_depth
    want = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(cfg.registry.timeout_s)}
    with _http_lock:
        if _http_depth == 0:
            _http_saved.clear()
            _http_saved.update({k: os.environ.get(k) for k in want})
        _http_depth += 1
        os.environ.update(want)
    try:
        yield
    finally:
        with _http_lock:
            _http_depth -= 1
            if _http_depth == 0:
                for k, v in _http_saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def is_transient(e: BaseException) -> bool:
    """Server down, slow, or answering 408/429/5xx (as opposed to a request the server rejected)."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return e.response.status_code in _TRANSIENT_STATUS
    if isinstance(e, RestException):  # an error the server answered with
        # two writers racing on the server's database (e.g. two alias updates on SQLite) lose with
        # an integrity/lock error: the write is idempotent, so it is retried like a 5xx
        if re.search(r"UNIQUE constraint failed|database is locked|IntegrityError|deadlock", str(e.message)):
            return True
        return e.get_http_status_code() in _TRANSIENT_STATUS
    if isinstance(e, MlflowException):
        msg = str(e.message)
        if re.search(r"API request to .* failed with (timeout )?exception", msg):  # no answer at all
            return True
        m = re.search(r"failed with error code (\d{3})", msg)  # a non-JSON error page
        return bool(m and int(m.group(1)) in _TRANSIENT_STATUS)
    cause = e.__cause__ or e.__context__
    return cause is not None and cause is not e and is_transient(cause)


def _short(e: BaseException, limit: int = 300) -> str:
    s = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"
    return s if len(s) <= limit else s[:limit] + "..."


def _why(e: BaseException, timeout_s: int) -> str:
    """What the server did, in words: timed out, refused the connection, or answered with an error."""
    import requests
    from mlflow.exceptions import RestException

    if isinstance(e, RestException):
        return f"answered HTTP {e.get_http_status_code()} {e.error_code}"
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"answered HTTP {e.response.status_code}"
    text = f"{e!r} {getattr(e, 'message', '')}"
    if "Timeout" in text or "timed out" in text:
        return f"no answer within registry.timeout_s={timeout_s}s"
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    m = re.search(r"error code (\d{3})", text)
    return f"answered HTTP {m.group(1)}" if m else "request failed"


def call(cfg: Config, what: str, fn: Callable, *args, **kwargs) -> Any:
    """fn(*args, **kwargs) with bounded retries on transient failures; clear errors otherwise."""
    from mlflow.exceptions import MlflowException

    r = cfg.registry
    attempts = r.max_retries + 1
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e):
                if isinstance(e, MlflowException):
                    raise RegistryError(f"{what}: {e.message}") from e
                raise
            if i == attempts - 1:
                raise RegistryUnavailable(
                    f"MLflow tracking server {tracking_uri(cfg)} is unavailable ({_why(e, r.timeout_s)}): could not "
                    f"{what} after {attempts} attempt(s) (registry.max_retries={r.max_retries}, "
                    f"registry.backoff_s={r.backoff_s}). Last error: {_short(e)}. Check that the server is up and "
                    f"that tracking.uri / $MLFLOW_TRACKING_URI point at it; rerunning the command completes an "
                    f"interrupted registration.") from e
            delay = r.backoff_s * 2 ** i
            log.warning("could not %s: %s; retry %d/%d in %.1fs", what, _why(e, r.timeout_s), i + 1, r.max_retries,
                        delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def ensure_reachable(cfg: Config) -> None:
    """Fail fast, before a stage writes anything, when the tracking server does not answer: the same
    bounded retries and one-line error as every registry call. Local stores (sqlite, files) need nothing."""
    if not cfg.tracking.enabled or not tracking_uri(cfg).startswith(("http://", "https://")):
        return
    with http_settings(cfg):
        call(cfg, "reach the tracking server", connect(cfg).search_experiments, max_results=1)


def not_found(e: BaseException) -> bool:
    code = getattr(e.__cause__, "error_code", None) or getattr(e, "error_code", None)
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def quote(value: str) -> str:
    """A value inside a single-quoted MLflow search filter."""
    return value.replace("'", "\\'")
