"""Segments: marketer-readable rules compiled to engine expressions."""
