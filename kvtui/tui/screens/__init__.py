"""kvtui."""
