"""The ``immune-node`` launcher: configuration, supervision trees, CLI."""

from ._config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
