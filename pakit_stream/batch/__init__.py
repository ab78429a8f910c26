"""Batch models (torch): trained off the event loop, saved as safetensors."""
