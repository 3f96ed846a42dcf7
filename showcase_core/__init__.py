"""Personalized Showcases: the library (no Ray in here; importable and testable without a cluster)."""

__version__ = "0.1.0"
