"""The one typed configuration of the project.

`params.yaml` (plus an optional preset and `-S key=value` overrides) is validated here into a `Config`;
every stage receives that object and nothing else reads YAML. An invalid value stops the command before
any work starts, with an error naming the key and the value.

base       the section base class and `ConfigError`
inputs     data, demos and model sections
training   the train section (its `method` is a name in bridgerl.core.methods)
schema     eval, rewards, registry, tracking and the whole `Config`
secrets    what may be logged or printed of a configuration
loading    presets, params.yaml and overrides → a validated `Config`
"""

from bridgerl.config.base import ConfigError
from bridgerl.config.inputs import (
                                    DataConfig,
                                    DemosConfig,
                                    EndpointConfig,
                                    FieldMap,
                                    ModelConfig,
                                    SourceSpec,
                                    SyntheticTask,
                                    TinyModel,
)
from bridgerl.config.loading import (
                                    PRESET_DIR,
                                    apply_override,
                                    deep_merge,
                                    load_config,
                                    parse_override,
                                    read_preset,
                                    read_yaml,
                                    resolve_preset,
                                    user_written,
)
from bridgerl.config.schema import (
                                    Config,
                                    EvalConfig,
                                    RegistryConfig,
                                    RewardsConfig,
                                    RewardTerm,
                                    TrackingConfig,
)
from bridgerl.config.secrets import REDACTED, redact, redact_text, secret_key
from bridgerl.config.training import BridgeConfig, DistributedConfig, GrpoConfig, LoraConfig, RolloutConfig, TrainConfig

__all__ = ["PRESET_DIR", "REDACTED", "BridgeConfig", "Config", "ConfigError", "DataConfig", "DemosConfig",
           "DistributedConfig", "EndpointConfig", "EvalConfig", "FieldMap", "GrpoConfig", "LoraConfig", "ModelConfig",
           "RegistryConfig", "RewardTerm", "RewardsConfig", "RolloutConfig", "SourceSpec", "SyntheticTask",
           "TinyModel", "TrackingConfig", "TrainConfig", "apply_override", "deep_merge", "load_config",
           "parse_override", "read_preset", "read_yaml", "redact", "redact_text", "resolve_preset", "secret_key",
           "user_written"]
