"""What may be logged or printed of a configuration: secrets (URL credentials, values of keys named like
api_key/token/password) replaced by ***."""

from __future__ import annotations

import re
from typing import Any

# secrets: what may be logged or printed of a configuration
# ------------------------------------------------------------------------------------------------
REDACTED = "***"
# keys whose values are secrets: api_key, apiKey, X-Api-Key, token, access_token, secret, password,
# authorization, credentials (not max_new_tokens, not api_key_env: a variable's name)
_SECRET_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|client_secret|password|passwd|pwd|auth|"
                         r"authorization|credentials?|bearer)$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_QUERY_SECRET = re.compile(r"([?&](?:api[_-]?key|key|token|access_token|secret|password|sig|signature)=)[^&#\s]+",
                           re.IGNORECASE)


def secret_key(name: str) -> bool:
    """Whether a configuration key (or header / body field) names a secret."""
    return bool(_SECRET_KEY.search(re.sub(r"([a-z])([A-Z])", r"\1_\2", str(name)).replace("-", "_")))


def redact_text(text: str) -> str:
    """A URL's user:password@ and secret query parameters blanked, anywhere in `text`."""
    return _QUERY_SECRET.sub(r"\1" + REDACTED, _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", text))


def redact(value: Any, key: str = "") -> Any:
    """A copy of a configuration value fit to log or print: values of secret-named keys and URL
    credentials replaced by ***, at any depth (demos.endpoint.extra_body, headers, ...)."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if key and secret_key(key) and value not in (None, "", False):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value
