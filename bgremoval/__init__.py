"""bgremoval: fine-tune, track, gate and serve image background-removal models."""

__version__ = "0.1.0"
