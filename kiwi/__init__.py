"""Kiwi: a small Linux container runtime."""

__version__ = "0.1.0"
