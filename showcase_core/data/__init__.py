"""Gest data: Arrow schemas, readers with validation, and the synthetic Gest-format world."""
