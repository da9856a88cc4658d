"""kvtui: keep every roleplay character's llama.cpp KV cache warm."""

__version__ = "0.1.0"
