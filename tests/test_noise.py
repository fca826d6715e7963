"""Known-harmless library warnings are silenced by exact message, and nothing else is (issue 15)."""

from __future__ import annotations

import logging
import warnings

from bridgerl.core import quiet


def test_known_harmless_warnings_are_dropped_and_others_kept(caplog):
    quiet.install()
    quiet.install()  # idempotent
    log = logging.getLogger("mlflow.transformers")
    with caplog.at_level(logging.WARNING, logger="mlflow.transformers"):
        log.warning("The model card could not be retrieved from the hub due to offline mode")
        log.warning("Unable to find license information for this model. Please verify permissible usage")
        log.warning("Something else went wrong while saving the model")
    assert [r.getMessage() for r in caplog.records] == ["Something else went wrong while saving the model"]
    with warnings.catch_warnings(record=True) as seen:
        quiet.install()  # (catch_warnings resets the filters it finds on exit; install inside it)
        warnings.simplefilter("default")
        quiet.install()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("`something_else` is deprecated", FutureWarning)
    assert [str(w.message) for w in seen] == ["`something_else` is deprecated"]
