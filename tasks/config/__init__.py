"""Typed configuration loaded from the YAML files in ``config/``."""
