"""pakit-stream."""
