"""A marketer's typo must fail at load time with the file, the key and a way out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config.loader import ConfigError, load_model
from tasks.config.models import AppConfig
from tasks.segments.rules import SegmentsConfig


def write(tmp_path: Path, text: str, name: str = "segments.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        load_model(path, SegmentsConfig)
    return str(exc.value)


def test_repository_config_is_valid() -> None:
    cfg = AppConfig()
    assert cfg.pipeline.business_timezone == "Asia/Ho_Chi_Minh"
    assert {"pos", "web", "crm"} <= set(cfg.sources.sources)
    assert cfg.destinations.destinations
    assert len(load_model(cfg.directory / "segments.yaml", SegmentsConfig).segments) >= 5


def test_unknown_key_names_file_and_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "segments:\n  - name: a\n    title: A\n    colour: red\n    rule: {field: orders, op: gte, value: 1}\n",
    )
    msg = errors_of(path)
    assert str(path) in msg
    assert "segments[0].colour: unknown key" in msg


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  - name: a\n    title: A\n    rule: {field: orders, op: gte, value: 'three'}\n")
    msg = errors_of(path)
    assert "segments[0].rule" in msg and "expected integer" in msg


def test_unknown_operator_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path, "segments:\n  - name: a\n    title: A\n    rule: {all: [{field: orders, op: gtee, value: 3}]}\n"
    )
    assert "segments[0].rule.all[0].op: unknown operator 'gtee'; did you mean 'gte'?" in errors_of(path)


def test_unknown_field_suggests_the_feature_marketers_mean(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  - name: a\n    title: A\n    rule: {field: total_spend, op: gte, value: 1}\n")
    assert "unknown field 'total_spend'; did you mean 'monetary_total'?" in errors_of(path)


def test_rule_without_a_kind_says_which_keys_are_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  - name: a\n    title: A\n    rule: {fields: orders}\n")
    assert "exactly one of: all, any, not, purchased, field" in errors_of(path)


def test_duplicate_segment_names_are_rejected(tmp_path: Path) -> None:
    rule = "rule: {field: orders, op: gte, value: 1}"
    path = write(tmp_path, f"segments:\n  - {{name: a, title: A, {rule}}}\n  - {{name: a, title: B, {rule}}}\n")
    assert "used twice" in errors_of(path)


def test_operator_and_field_kinds_must_agree(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  - name: a\n    title: A\n    rule: {field: province, op: gte, value: x}\n")
    assert "needs a numeric or date field" in errors_of(path)


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "segments: [\n")
    assert "not valid YAML" in errors_of(path)


def test_missing_file_says_where_to_get_one(tmp_path: Path) -> None:
    assert "file not found" in errors_of(tmp_path / "nope.yaml")


def test_pipeline_timezone_must_exist(tmp_path: Path) -> None:
    write(tmp_path, "business_timezone: Asia/Saigon_City\n", "pipeline.yaml")
    with pytest.raises(ConfigError) as exc:
        _ = AppConfig(tmp_path).pipeline
    assert "business_timezone: unknown time zone 'Asia/Saigon_City'" in str(exc.value)


def test_pipeline_engine_is_duckdb_or_spark(tmp_path: Path) -> None:
    write(tmp_path, "engine: spark\n", "pipeline.yaml")
    assert AppConfig(tmp_path).pipeline.engine == "spark"
    write(tmp_path, "engine: postgres\n", "pipeline.yaml")
    with pytest.raises(ConfigError) as exc:
        _ = AppConfig(tmp_path).pipeline
    assert "engine:" in str(exc.value) and "'duckdb'" in str(exc.value)
