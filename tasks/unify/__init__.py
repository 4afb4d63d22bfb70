"""Unify clean source tables into one profile per customer."""
