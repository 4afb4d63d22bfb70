"""Normalization of identifiers and places before they are compared or exported."""
