"""Disentanglement metrics and figures (placeholder docstring)."""
