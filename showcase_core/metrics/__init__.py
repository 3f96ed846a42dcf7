"""Evaluation metrics: plain functions over lists and arrays."""
