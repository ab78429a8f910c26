"""All settings of pakit-stream, in one place.

Each setting is a field of :class:`Settings` with a type, a default, a docstring (the ``help``
metadata) and an environment variable ``PAKIT_STREAM_<NAME>``. :meth:`Settings.from_env` is the
only code in the package that reads ``os.environ``; the CLI overlays its flags on top.

>>> s = Settings.from_env({"PAKIT_STREAM_WEB_PORT": "7001"})
>>> s.web_port, s.web_host
(7001, '127.0.0.1')
>>> Settings.from_env({"PAKIT_STREAM_WEB_PORT": "http"})
Traceback (most recent call last):
...
pakit_stream.exceptions.ConfigError: PAKIT_STREAM_WEB_PORT: expected int, got 'http'
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from typing import Any
from collections.abc import Mapping
from pathlib import Path

from pakit_stream.exceptions import ConfigError

__all__ = ["Settings", "ENV_PREFIX"]

ENV_PREFIX = "PAKIT_STREAM_"


def _setting(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


def _secret(help: str):
    """A setting that must never be printed: out of ``repr`` (and so out of logs)."""
    return dataclasses.field(default=None, repr=False, metadata={"help": help, "secret": True})


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings of the daemon, the node-side collector and the learners."""

    broker: str | None = _setting(
        None, "Kafka bootstrap server HOST:PORT. Unset: start the embedded tansu broker."
    )
    web_host: str = _setting("127.0.0.1", "Address the HTTP server (hints, metrics) binds to.")
    advertised_url: str = _setting(
        "", "URL at which the other workers of the group reach this one's HTTP server, to "
            "forward a node's hint to the worker that owns the node (default: "
            "http://WEB_HOST:WEB_PORT, or the host name when WEB_HOST is 0.0.0.0).")
    route_timeout_s: float = _setting(
        0.5, "Longest a worker waits for the owner of a node's partition to answer a hint it "
             "forwarded; after it, it answers from its own state.")
    web_port: int = _setting(6066, "Port of the HTTP server (0: pick a free port).")
    hint_port: int | None = _setting(
        None, "Port on which hint replicas serve the hint routes from a forked image of the "
              "learners, away from ingestion (0: pick a free port; unset: no replicas).")
    hint_refresh_s: float = _setting(
        2.0, "How often a fresh hint replica is forked: the most its answers lag the learners.")
    data_dir: Path = _setting(Path("models"), "Model store: checkpoints and model versions.")
    app_id: str = _setting("pakit-stream", "Kafka consumer group and Faust application id.")
    event_loop: str = _setting(
        "uvloop", "asyncio event loop of the daemon: uvloop (faster where installed) or aio."
    )
    topic_partitions: int = _setting(4, "Partitions of each telemetry topic the daemon creates.")
    apply_slice_s: float = _setting(
        0.0005, "Longest the daemon applies an envelope's events before it lets hints and timers "
                "run (seconds); the slice's size follows the measured cost per event.")
    checkpoint_interval_s: float = _setting(
        5.0, "Seconds between checkpoints of learner state and offsets (the replay bound)."
    )
    rebalance_timeout_s: float = _setting(
        6.0, "Consumer-group session and rebalance timeout: how fast a dead worker is noticed."
    )
    resume_probe_timeout_s: float = _setting(
        5.0, "Seconds to wait, on partition assignment, for the records before the saved "
        "offsets (to tell a recreated log from the one the checkpoint was taken on)."
    )
    max_message_bytes: int = _setting(
        8 * 1024 * 1024, "Largest Kafka message value accepted; larger ones go to the DLQ."
    )
    dlq_max_bytes: int = _setting(
        1_000_000, "Largest DLQ record value; a longer refused message is kept truncated, with "
        "its size and SHA-256 in headers (Kafka's default message limit is 1 MB)."
    )
    stream_buffer_messages: int = _setting(
        64, "Kafka messages each agent buffers ahead of processing (Faust's default is 4096): "
        "with the fetch size, this bounds the memory a backlog can take."
    )
    max_event_bytes: int = _setting(
        64 * 1024, "Largest single event inside a message; larger ones go to the DLQ."
    )
    # learners
    bandit_latency_scale_ms: float = _setting(
        200.0, "Latency at which a successful fetch's exported quality figure falls to 1/e."
    )
    bandit_failure_ms: float = _setting(
        1000.0, "Least a failed fetch costs the peer learner, whatever latency it reports."
    )
    bandit_halflife: float = _setting(
        20_000.0, "Fetches after which the peer learner's pooled statistics (how fast a "
        "latency goes stale, how wrong a first guess is) weigh half."
    )
    bandit_max_pairs: int = _setting(
        100_000, "(node, peer) pairs the peer learner keeps; least recent are evicted."
    )
    bandit_max_peers: int = _setting(
        10_000, "Nodes and peers whose pooled latency the peer learner keeps; least recent "
        "are evicted.")
    eval_every: int = _setting(
        32, "Score the peer learner, the codec chooser and the gossip learner prequentially "
        "(predict, then learn) on one event in this many: a prediction costs more than an update."
    )
    gossip_message_cost: float = _setting(
        0.01, "Reward lost per gossip message per node (see learners/network.py for the reward)."
    )
    gossip_coverage_target: float = _setting(
        0.995, "Coverage a gossip round should reach (see gossip_miss_penalty)."
    )
    gossip_miss_penalty: float = _setting(
        10.0, "Reward lost per unit of coverage short of the target: at 10, falling 0.1% short "
        "costs as much as one more message per node."
    )
    gossip_epsilon: float = _setting(0.1, "Exploration rate of gossip-setting hints.")
    gossip_control_cost: float = _setting(
        0.1, "What one control message (a digest of anti-entropy, no payload) costs, in payload "
             "messages: the gossip learner picks the cheapest setting by payload plus this "
             "times control.")
    # privacy
    dp_epsilon: float = _setting(
        0.0, "Laplace differential privacy for the quality figures the daemon exports (metrics, "
        "/health): the epsilon of each release; 0 turns it off."
    )
    dp_release_s: float = _setting(60.0, "Least seconds between two private releases of a figure.")
    k_anonymity: int = _setting(
        1, "A block enters the prefetch model's training data, and a hint names a block, "
        "object or peer, only if at least this many distinct nodes reported it (1: off)."
    )
    # batch models
    codec_cpu_bytes_per_us: float = _setting(
        1.0, "Price of a CPU µs in bytes: a codec's cost on a block is compressed bytes + "
        "this * (compress_us + decompress_us), and choosing is charged at the same price.")
    codec_probe_us: float = _setting(
        5.0, "What a node pays for the 4 KiB lz4 probe, in µs (charged to the rules using it).")
    codec_entropy_us: float = _setting(
        12.0, "What a node pays for the sampled entropy, in µs (charged to the codec net).")
    codec_lookup_us: float = _setting(
        0.3, "What a node pays to apply a compiled codec rule, in µs.")
    codec_halflife: float = _setting(
        100.0, "Stored blocks after which a codec rule's past costs weigh half.")
    retrain_check_s: float = _setting(30.0, "How often the leader asks whether to retrain.")
    retrain_interval_s: float = _setting(3600.0, "Retrain at least this often (with data).")
    retrain_min_new: int = _setting(5000, "Retrain after this many new labelled blocks.")
    retrain_min_samples: int = _setting(200, "Never retrain on fewer labelled blocks than this.")
    retrain_holdout_fraction: float = _setting(
        0.2, "Newest share of the window held out for the validation gate.")
    retrain_min_gain: float = _setting(
        0.0, "Held-out accuracy a candidate must gain over the serving model to replace it.")
    retrain_timeout_s: float = _setting(600.0, "A retrain running longer is killed.")
    model_keep: int = _setting(
        5, "Model versions kept per model besides the serving one, its rollback target and a "
        "running canary; older ones are deleted after each retrain.")
    canary_share: float = _setting(
        0.1, "Share of the nodes (by a hash of node_id) a newly accepted batch model serves "
        "first, as a canary, while its online quality is compared with the serving version's "
        "on the same events; 0 serves an accepted model to every node at once.")
    canary_min_samples: int = _setting(
        200, "Paired events (both arms scored) before a canary may be promoted or rolled back.")
    canary_max_samples: int = _setting(
        2000, "Paired events after which a canary that is neither better nor worse with 95% "
        "confidence is decided by the sign of its mean difference.")
    retrain_threads: int = _setting(1, "torch threads of a retrain (leave a core to the agents).")
    prefetch_window: int = _setting(200_000, "Recent reads kept to train the prefetch model.")
    prefetch_max_vocab: int = _setting(
        512, "Steps (chunk-index deltas) the prefetch net can name; rarer steps are one class.")
    prefetch_min_confidence: float = _setting(
        0.1, "For a node that gives no cache size, a prefetch proposal is served only if at "
             "least this share of proposals like it (same source, rank and strength of "
             "evidence) were read within the horizon. With cache_blocks the floor is learned.")
    prefetch_horizon: int = _setting(
        16, "Reads within which a proposed block must be read to count as a useful proposal.")
    prefetch_score_every: int = _setting(
        1, "The prefetch learner scores the proposals after one read in this many (per node, "
           "pseudo-random); 4 halves its cost per read and lowers hit ratios by up to 0.02.")
    state_key: str | None = _secret(
        "Key that signs the checkpoints (at least 32 bytes). Unset: the key in "
        "state_key_file.")
    state_key_file: Path = _setting(
        Path("~/.pakit-stream/state.key"), "Where the checkpoints' signing key is kept when "
        "state_key is unset (created on first use, mode 0600); it must be outside data_dir, "
        "so that whoever can write the checkpoints cannot also read the key.")
    model_key: str | None = _secret(
        "Key (at least 32 bytes) that signs the model records workers exchange on "
        "pakit.models (HMAC-SHA256); when set, a worker refuses a record unsigned or signed "
        "with another key. Give every worker the same one.")
    admin_token: str | None = _secret(
        "Bearer token of the admin endpoints (rollback, retrain); unset: they are off.")
    # Kafka security, passed to every client: the daemon's Faust consumers and producer, the
    # admin client, the collector's and replay's producers
    kafka_security_protocol: str = _setting(
        "PLAINTEXT", "Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: str = _setting(
        "PLAIN", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str | None = _setting(None, "SASL user name.")
    kafka_sasl_password: str | None = _secret("SASL password.")
    kafka_ssl_cafile: str | None = _setting(None, "CA certificates to verify the brokers (SSL).")
    kafka_ssl_certfile: str | None = _setting(None, "Client certificate (SSL, mutual TLS).")
    kafka_ssl_keyfile: str | None = _setting(None, "Client certificate's private key (SSL).")
    lsh_threshold: float = _setting(0.7, "Jaccard similarity the MinHash LSH index targets.")
    lsh_capacity: int = _setting(100_000, "Blocks the LSH index keeps; oldest are evicted.")
    lsh_max_candidates: int = _setting(
        256, "Signatures one similarity query verifies at most (it also walks at most 64 "
             "chain links per band): bounded work however many fingerprints are identical.")
    successor_capacity: int = _setting(
        200_000, "Blocks the access agent's successor table keeps; least recent are evicted."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from ``PAKIT_STREAM_*`` variables, then apply ``overrides``.

        Overrides whose value is ``None`` are ignored, so CLI flags left unset keep the
        environment's value.
        """
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            var = ENV_PREFIX + f.name.upper()
            if var in environ:
                values[f.name] = _convert(var, environ[var], hints[f.name])
        for name, value in overrides.items():
            if name not in hints:
                raise ConfigError(f"unknown setting {name!r}")
            if value is not None:
                values[name] = _convert(name, value, hints[name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values out of range."""
        if self.broker is not None and not re.fullmatch(r"[^\s:]+:\d{1,5}", self.broker):
            raise ConfigError(f"broker must be HOST:PORT, got {self.broker!r}")
        if self.event_loop not in ("uvloop", "aio"):
            raise ConfigError(f"event_loop must be uvloop or aio, got {self.event_loop!r}")
        if not 0 <= self.web_port <= 65535:
            raise ConfigError(f"web_port out of range: {self.web_port}")
        if self.hint_port is not None and not 0 <= self.hint_port <= 65535:
            raise ConfigError(f"hint_port out of range: {self.hint_port}")
        if self.hint_port and self.hint_port == self.web_port:
            raise ConfigError(f"hint_port and web_port are both {self.web_port}: the hint "
                              "replicas need a port of their own")
        positive = ("topic_partitions", "apply_slice_s", "route_timeout_s", "hint_refresh_s", "checkpoint_interval_s", "rebalance_timeout_s", "max_message_bytes",
                    "max_event_bytes", "dlq_max_bytes", "codec_cpu_bytes_per_us", "codec_halflife", "retrain_check_s", "retrain_interval_s",
                    "retrain_min_new", "retrain_min_samples", "retrain_timeout_s", "retrain_threads",
                    "prefetch_window", "prefetch_max_vocab", "prefetch_horizon", "prefetch_score_every", "bandit_latency_scale_ms", "bandit_max_peers",
                    "bandit_max_pairs", "bandit_halflife", "bandit_failure_ms",
                    "eval_every", "lsh_capacity", "successor_capacity",
                    "stream_buffer_messages", "resume_probe_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("codec_probe_us", "codec_entropy_us", "codec_lookup_us"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.state_key is not None and len(self.state_key.encode()) < 32:
            raise ConfigError("state_key must be at least 32 bytes")
        key_file = Path(self.state_key_file).expanduser().resolve()
        if self.state_key is None and key_file.is_relative_to(Path(self.data_dir).resolve()):
            raise ConfigError(f"state_key_file ({key_file}) must be outside data_dir: a key "
                              "beside the checkpoints it signs protects nothing")
        if self.model_key is not None and len(self.model_key.encode()) < 32:
            raise ConfigError("model_key must be at least 32 bytes")
        if self.model_keep < 0:
            raise ConfigError("model_keep must not be negative")
        if not 0 <= self.canary_share < 1:
            raise ConfigError("canary_share must be in [0, 1)")
        if not 1 <= self.canary_min_samples <= self.canary_max_samples:
            raise ConfigError("canary_min_samples must be from 1 to canary_max_samples")
        if not 0 < self.retrain_holdout_fraction < 1:
            raise ConfigError("retrain_holdout_fraction must be in (0, 1)")
        if not 1 <= self.prefetch_score_every <= 1024:
            raise ConfigError("prefetch_score_every must be from 1 to 1024")
        if not 0 <= self.prefetch_min_confidence <= 1:
            raise ConfigError("prefetch_min_confidence must be in [0, 1]")
        if not 0 < self.lsh_threshold < 1:
            raise ConfigError("lsh_threshold must be in (0, 1)")
        if not 1 <= self.lsh_max_candidates <= 1_000_000:
            raise ConfigError("lsh_max_candidates must be from 1 to 1,000,000, got "
                              f"{self.lsh_max_candidates}")
        if not 0 < self.gossip_coverage_target <= 1:
            raise ConfigError("gossip_coverage_target must be in (0, 1]")
        if self.gossip_control_cost < 0:
            raise ConfigError("gossip_control_cost must not be negative")
        if not 0 <= self.gossip_epsilon <= 1:
            raise ConfigError("gossip_epsilon must be in [0, 1]")
        if self.dp_epsilon < 0 or self.dp_release_s < 0:
            raise ConfigError("dp_epsilon and dp_release_s must not be negative")
        if self.k_anonymity < 1:
            raise ConfigError("k_anonymity must be at least 1")
        if self.kafka_security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"kafka_security_protocol must be one of {SECURITY_PROTOCOLS}")
        if self.kafka_security_protocol.startswith("SASL"):
            if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(f"kafka_sasl_mechanism must be one of {SASL_MECHANISMS}")
            if not (self.kafka_sasl_username and self.kafka_sasl_password):
                raise ConfigError("SASL needs kafka_sasl_username and kafka_sasl_password")

    def kafka_config(self, client: str = "kafka-python") -> dict[str, Any]:
        """The security settings as the arguments of a Kafka client: ``"kafka-python"`` (the
        CA and certificate files) or ``"aiokafka"`` (an SSL context made from them). The one
        place the security settings are translated; :meth:`faust_credentials` builds on it.

        >>> Settings().kafka_config()
        {'security_protocol': 'PLAINTEXT'}
        >>> sorted(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u",
        ...                 kafka_sasl_password="p", kafka_ssl_cafile="/ca.pem").kafka_config())
        ['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol', 'ssl_cafile']
        """
        protocol = self.kafka_security_protocol
        config: dict[str, Any] = {"security_protocol": protocol}
        if protocol.startswith("SASL"):
            config.update(sasl_mechanism=self.kafka_sasl_mechanism,
                          sasl_plain_username=self.kafka_sasl_username,
                          sasl_plain_password=self.kafka_sasl_password)
        if protocol.endswith("SSL"):
            if client == "aiokafka":
                import ssl

                context = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
                if self.kafka_ssl_certfile:
                    context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
                config["ssl_context"] = context
            else:
                for key in ("cafile", "certfile", "keyfile"):
                    value = getattr(self, f"kafka_ssl_{key}")
                    if value:
                        config[f"ssl_{key}"] = value
        return config

    def faust_credentials(self):
        """Faust's broker credentials for the security settings; ``None`` for PLAINTEXT."""
        import faust

        config = self.kafka_config("aiokafka")
        context = config.get("ssl_context")
        if config["security_protocol"].startswith("SASL"):
            return faust.SASLCredentials(username=config["sasl_plain_username"],
                                         password=config["sasl_plain_password"],
                                         mechanism=config["sasl_mechanism"], ssl_context=context)
        return None if context is None else faust.SSLCredentials(context)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, help) for every setting, for ``--help`` and docs."""
        return [
            (ENV_PREFIX + f.name.upper(), repr(f.default), f.metadata["help"])
            for f in dataclasses.fields(cls)
        ]


def _convert(name: str, raw, hint):
    if not isinstance(raw, str):
        return raw
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = args[0] if args else hint
    if target is str:
        return raw
    try:
        return target(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {target.__name__}, got {raw!r}") from None
