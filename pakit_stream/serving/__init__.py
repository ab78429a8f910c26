"""Serving: hints to nodes, in process and over HTTP (:mod:`pakit_stream.serving.hints`), the
HTTP API as one route table with its OpenAPI document (:mod:`~pakit_stream.serving.api`), and
the batch models as the daemon runs them (:mod:`~pakit_stream.serving.codec`,
:mod:`~pakit_stream.serving.prefetch`)."""

__all__ = ["BadRequest", "HintService"]


def __getattr__(name: str):
    # imported when asked for: the served models must load without the hint service (which
    # needs the pipeline, which needs the model specs, which need the served models)
    if name in __all__:
        from pakit_stream.serving import hints

        return getattr(hints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
