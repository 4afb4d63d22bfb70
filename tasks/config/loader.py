"""Read a YAML file into a pydantic model and turn every failure into one readable message.

Marketers edit segments.yaml by hand; an error must say which file and which key is wrong and what
would be right, not print a pydantic traceback.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

# Discriminated-union tags show up in pydantic's error locations; they are not keys the user wrote.
TAG_PREFIX = "rule:"


class ConfigError(ValueError):
    """A config file is missing, unreadable or does not match its schema."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: invalid configuration\n{lines}\nFix the key(s) above and run again.")


def suggest(word: str, choices: list[str]) -> str:
    """ "; did you mean X?" for a near miss, else the list of valid choices."""
    from tasks.features.catalog import SYNONYMS  # words marketers use for feature names

    if word in SYNONYMS and SYNONYMS[word] in choices:
        return f"; did you mean {SYNONYMS[word]!r}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(choices))}"


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith(TAG_PREFIX):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(path, ["file not found; copy it from the repository's config/ folder"])
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {exc}"]) from exc


def load_model(path: Path, model: type[M]) -> M:
    data = load_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; remove it or check its spelling"
            problems.append(f"{format_loc(err['loc'])}: {msg}")
        raise ConfigError(path, problems) from None
