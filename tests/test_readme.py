"""The README is the marketer's reference: it must list every feature and every shipped segment."""

from __future__ import annotations

from tasks import settings
from tasks.config.loader import load_model
from tasks.features.catalog import FEATURES
from tasks.segments.rules import OPERATORS, SegmentsConfig

README = (settings.PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def test_every_feature_is_documented() -> None:
    missing = [f.name for f in FEATURES if f"| `{f.name}` | {f.kind} |" not in README]
    assert missing == []


def test_every_operator_and_shipped_segment_is_documented() -> None:
    assert all(op in README for op in OPERATORS)
    segments = load_model(settings.PROJECT_ROOT / "config" / "segments.yaml", SegmentsConfig)
    assert [s.name for s in segments.segments if f"`{s.name}`" not in README] == []


def test_readme_gives_the_two_commands() -> None:
    assert "make demo" in README and "make test" in README
