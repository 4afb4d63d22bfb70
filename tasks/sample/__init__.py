"""Deterministic sample data standing in for the real POS, CRM and GA4 sources.

The pipeline is developed and demonstrated without access to production data,
so this package fabricates a plausible Vietnamese retail business, writes it in
the same shapes the real sources deliver, and records which rows were made bad
on purpose so data-quality checks can be verified against a known answer.
"""

from tasks.sample.generate import (
    InjectedRow,
    SampleData,
    generate,
    injected_counts,
    write,
)

__all__ = ["InjectedRow", "SampleData", "generate", "injected_counts", "write"]
