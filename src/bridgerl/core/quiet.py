"""Known-harmless library warnings, silenced by their exact message (everything else still shows).

- transformers' FutureWarning that `is_gradient_checkpointing` is deprecated (raised inside
  transformers/peft when a model is wrapped; nothing in bridgerl calls it);
- mlflow.transformers' hub look-ups for a model logged from a local directory: no model card, no
  license file (there is no hub repository to ask), and its note that `predict` params override the
  saved inference configuration (what the signature's params are for).
"""

from __future__ import annotations

import logging
import warnings

WARNINGS = [(FutureWarning, r"`is_gradient_checkpointing` is deprecated")]
LOG_MESSAGES = {
    "mlflow.transformers": ("The model card could not be retrieved from the hub",
                            "Unable to find license information for this model",
                            "params provided to the `predict` method will override"),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def install() -> None:
    """Install the filters (idempotent)."""
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefixes in LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
