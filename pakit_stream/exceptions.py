"""The exceptions pakit-stream raises.

Every error the package raises on purpose derives from one root, so callers can catch
``PakitStreamError`` and know they have seen all of them::

    PakitStreamError
    ├── ConfigError          a setting is missing, malformed or out of range
    ├── InvalidEventError    an event breaks the contract in docs/events.md
    │   └── PrivacyViolation an event could carry block content, so it is refused
    ├── ModelLoadError       a saved model or checkpoint is missing, corrupt or tampered with
    └── BrokerError          the embedded broker could not be started or reached
"""

from __future__ import annotations

__all__ = [
    "PakitStreamError",
    "ConfigError",
    "InvalidEventError",
    "PrivacyViolation",
    "ModelLoadError",
    "BrokerError",
]


class PakitStreamError(Exception):
    """Root of every error raised by pakit-stream."""


class ConfigError(PakitStreamError):
    """A setting is missing, malformed or out of range."""


class InvalidEventError(PakitStreamError, ValueError):
    """An event does not follow the event contract.

    ``reason`` is the one-line explanation that goes into the dead-letter topic.
    """

    kind = "invalid"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PrivacyViolation(InvalidEventError):
    """An event carries, or could carry, block content."""

    kind = "privacy"


class ModelLoadError(PakitStreamError):
    """A saved model or checkpoint could not be loaded safely."""


class BrokerError(PakitStreamError):
    """The embedded Kafka-compatible broker could not be started or reached."""
