"""Plugin registries: the classes behind a config ``kind`` (sources, destinations).

A plugin is a small class with a pydantic ``Options`` model and a ``(name, options)`` constructor.
Building one validates its options against the YAML it came from, so errors name the file and the
key (``sources.pos.options.url``) rather than a constructor argument.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from tasks.config.loader import ConfigError, format_loc, suggest

C = TypeVar("C", bound=type)


class Registry:
    def __init__(self, section: str, builtins: Sequence[str]) -> None:
        self.section = section
        self._builtins = builtins  # modules whose @register calls fill this registry
        self._kinds: dict[str, type] = {}

    def register(self, kind: str) -> Callable[[C], C]:
        def deco(cls: C) -> C:
            self._kinds[kind] = cls
            cls.kind = kind  # type: ignore[attr-defined]
            return cls

        return deco

    def kinds(self) -> list[str]:
        for module in self._builtins:
            importlib.import_module(module)
        return sorted(self._kinds)

    def build(self, name: str, kind: str, options: dict[str, Any], config_file: Path) -> Any:
        known = self.kinds()
        if kind not in known:
            raise ConfigError(
                config_file, [f"{self.section}.{name}.kind: unknown kind {kind!r}" + suggest(kind, known)]
            )
        cls: Any = self._kinds[kind]
        try:
            parsed = cls.Options.model_validate(options)
        except ValidationError as exc:
            problems = [f"{self.section}.{name}.options.{format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
            raise ConfigError(config_file, problems) from None
        return cls(name, parsed)
