"""The exceptions pakit-stream raises.

Every error the package raises on purpose derives from one root, so callers can catch
``PakitStreamError`` and know they have seen all of them::

    PakitStreamError
    ├── ConfigError          a setting is missing, malformed or out of range
    ├── UsageError           a call got an argument or option it does not accept (a ValueError)
    ├── DataError            input data cannot be used: it does not parse, or is too little
    │                        to learn or test on (a ValueError)
    ├── InvalidEventError    an event breaks the contract in docs/events.md (a ValueError)
    │   └── PrivacyViolation an event could carry block content, so it is refused
    ├── ModelLoadError       a saved model or checkpoint is missing, corrupt or tampered with
    ├── BrokerError          the embedded broker could not be started or reached
    └── DaemonError          a daemon subprocess exited or did not answer (a RuntimeError)

Those marked ValueError or RuntimeError are that too: code that caught the built-in one before
still catches them. ``pakit-stream`` exits with status 2 on ``ConfigError`` and
``UsageError`` (fix the command line or the environment) and 1 on the others.
"""

from __future__ import annotations

__all__ = [
    "PakitStreamError",
    "ConfigError",
    "UsageError",
    "DataError",
    "InvalidEventError",
    "PrivacyViolation",
    "ModelLoadError",
    "BrokerError",
    "DaemonError",
]


class PakitStreamError(Exception):
    """Root of every error raised by pakit-stream."""


class ConfigError(PakitStreamError):
    """A setting is missing, malformed or out of range."""


class UsageError(PakitStreamError, ValueError):
    """A call got an argument or option outside what it accepts, or came too early (a model
    used before it is trained)."""


class DataError(PakitStreamError, ValueError):
    """Input data cannot be used: a file that does not parse, too few samples or blocks."""


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


class DaemonError(PakitStreamError, RuntimeError):
    """A ``pakit-stream run`` subprocess exited, or did not answer in time."""
