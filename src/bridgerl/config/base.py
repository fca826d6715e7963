"""What every configuration section shares: unknown keys are errors, assignments are validated; and the error
every configuration problem raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the offending value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
