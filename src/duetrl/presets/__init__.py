"""Shipped presets, one YAML file per environment (``any.yaml`` for presets that fit every environment)."""
