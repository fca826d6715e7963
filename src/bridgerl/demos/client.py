"""A small client for OpenAI-compatible `/v1/chat/completions` endpoints (vLLM, SGLang, providers).

One call is one chat completion. Transient failures (429, 5xx, 408, timeouts, connection errors, a
200 whose body is not a well-formed completion) are retried with exponential backoff and jitter,
honouring a 429's Retry-After; other 4xx statuses fail at once (a wrong key or model name will not
fix itself). A request that keeps failing after `max_retries` raises `EndpointUnavailable`.
The API key goes only into the Authorization header: it is never part of a message, a log line or
a repr. Thread-safe: each thread uses its own HTTP session (connection pool).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import requests

from bridgerl.config import redact_text

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """The endpoint rejected a request in a way retrying cannot fix (4xx)."""


class EndpointUnavailable(RuntimeError):
    """A request still failed after all retries."""


class _Transient(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.retry_after = reason, retry_after


@dataclass
class Completion:
    text: str  # reasoning (if the server splits it out) + final content
    tokens: int | None  # completion tokens as reported by the server
    finish_reason: str | None


def _retry_after(resp: requests.Response) -> float | None:
    v = resp.headers.get("Retry-After")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def parse_completion(body) -> Completion:
    """The first choice of a chat.completion body; a reasoning field is prepended inside <think> tags."""
    try:
        choice = body["choices"][0]
        msg = choice["message"]
        content = msg.get("content") or ""
        reasoning = msg.get("reasoning_content") or msg.get("reasoning") or ""
        if not isinstance(content, str) or not isinstance(reasoning, str):
            raise TypeError("content is not a string")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise _Transient("malformed", f"reply is not a chat completion ({type(e).__name__}: {e})") from None
    text = f"<think>\n{reasoning.strip()}\n</think>\n\n{content.strip()}" if reasoning.strip() else content
    usage = body.get("usage") or {}
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return Completion(text=text, tokens=tokens if isinstance(tokens, int) else None,
                      finish_reason=choice.get("finish_reason"))


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout_s: float = 120.0,
                 max_retries: int = 5, backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 extra_body: dict | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._headers = {"Content-Type": "application/json"}
        self._key = api_key or None
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.extra_body = dict(extra_body or {})
        self.retries: Counter[str] = Counter()  # retries by cause ("500", "timeout", "malformed", …)
        self._lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:  # never show the headers (the key) nor the URL's credentials
        return f"ChatClient(url={self.shown_url!r}, model={self.model!r})"

    @property
    def shown_url(self) -> str:
        """The URL as errors and logs show it: user:password@ and secret query parameters blanked."""
        return redact_text(self.url)

    def _redact(self, text: str) -> str:
        """Server text quoted in errors and logs, with the key blanked should a server echo it."""
        text = text.replace(self._key, "***") if self._key else text
        return redact_text(text)

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _once(self, payload: dict) -> Completion:
        try:
            resp = self._session().post(self.url, json=payload, headers=self._headers, timeout=self.timeout_s)
        except requests.Timeout:
            raise _Transient("timeout", f"no reply within {self.timeout_s}s") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as e:
            raise EndpointError(f"demos.endpoint.base_url: {self.shown_url!r} is not a usable URL "
                                f"({self._redact(str(e))})") from None
        except requests.ConnectionError as e:
            raise _Transient("connection", f"connection failed ({type(e).__name__})") from None
        except requests.RequestException as e:  # a reply cut off mid-body, a bad chunk, …
            raise _Transient("connection", f"transfer failed ({type(e).__name__})") from None
        if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
            raise _Transient(str(resp.status_code), f"HTTP {resp.status_code}: {self._redact(resp.text[:200])!r}",
                             _retry_after(resp) if resp.status_code == 429 else None)
        if resp.status_code >= 400:
            hint = " (check the API key variable demos.endpoint.api_key_env)" if resp.status_code in (401, 403) else ""
            raise EndpointError(f"{self.shown_url} answered HTTP {resp.status_code}{hint}: {self._redact(resp.text[:300])!r}")
        try:
            body = resp.json()
        except ValueError:
            raise _Transient("malformed", f"reply is not JSON: {self._redact(resp.text[:100])!r}") from None
        return parse_completion(body)

    def complete(self, messages: list[dict], *, temperature: float, top_p: float, max_tokens: int,
                 seed: int | None = None) -> Completion:
        payload = {"model": self.model, "messages": messages, "temperature": temperature, "top_p": top_p,
                   "max_tokens": max_tokens, **self.extra_body}
        if seed is not None:
            payload["seed"] = seed
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(payload)
            except _Transient as e:
                if attempt == self.max_retries:
                    raise EndpointUnavailable(f"{self.shown_url}: request failed {attempt + 1} time(s); last error: "
                                              f"{self._redact(str(e))}") from None
                with self._lock:
                    self.retries[e.reason] += 1
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** attempt * (0.5 + random.random() / 2))
                if e.retry_after is not None:
                    delay = min(self.backoff_max_s, max(delay, e.retry_after))
                log.info("retrying after %s (attempt %d/%d, %.2fs)", e, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")
