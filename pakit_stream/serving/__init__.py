"""Serving: hints to nodes, in process and over HTTP."""
from pakit_stream.serving.hints import BadRequest, HintService

__all__ = ["BadRequest", "HintService"]
