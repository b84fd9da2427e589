"""The config file every command and the job API share: JSON or YAML with ``curate``, ``train`` and
``eval`` sections, any subset of them.

One reader for all of them (``load_sections``): each section is validated by its own config class
(a ``ConfigSection``), flags override the file, and an unknown section or a key in the wrong section
is an error naming the file, the section and the key. A file without sections holds the keys of the
one section a single-section command reads (``beacon curate --config curate.yaml``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

SECTIONS = ("curate", "train", "eval")
S = TypeVar("S", bound="ConfigSection")


class ConfigSection(BaseModel):
    """Base of CurateConfig, TrainConfig and EvalConfig: unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: Any, info: Any) -> Any:
        # JSON and YAML both spell infinity and NaN (`Infinity`, `.inf`); no knob means either.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if isinstance(value, tuple) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ValueError(f"must hold finite numbers, got {value}")
        return value

    @classmethod
    def merge(cls, base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
        """``override``'s keys win over ``base``'s; a section with a rule between keys refines this."""
        return {**base, **override}

    @classmethod
    def from_layers(cls: type[S], *layers: dict[str, Any], where: str = "") -> S:
        """The config built from layers, later ones winning (file, then flags); a None is a value.

        Raises:
            ValueError: a key or value is invalid; the message names the section, the key and the value.
        """
        data: dict[str, Any] = {}
        for layer in layers:
            data = cls.merge(data, layer)
        try:
            return cls(**data)
        except ValidationError as e:
            raise ValueError(f"invalid {cls.section_name()} config{where}: {explain(e)}") from None

    @classmethod
    def section_name(cls) -> str:
        return cls.__name__.removesuffix("Config").lower()


def first_line(error: BaseException) -> str:
    """An exception's message as one line (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def explain(e: ValidationError) -> str:
    """A pydantic error as one line: each failing key, why, and the value it got."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if loc:
            parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        else:
            parts.append(err["msg"].removeprefix("Value error, "))
    return "; ".join(parts)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping: JSON, or YAML when the name ends in .yaml/.yml.

    Raises:
        ValueError: the file is missing, does not parse, or does not hold a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file not found: {p}")
    yaml_file = p.suffix in (".yaml", ".yml")
    try:
        text = p.read_text(encoding="utf-8")
        if yaml_file:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any read or parse error is the user's file
        raise ValueError(f"config file {p} is not valid {'YAML' if yaml_file else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


def file_sections(path: str | Path | None, wanted: list[str]) -> dict[str, dict[str, Any]]:
    """The sections of the file at ``path`` that a command reads (``wanted``), as plain mappings.

    Raises:
        ValueError: the file is unreadable, names an unknown section, mixes sections with loose keys,
            or holds loose keys for a command that reads several sections.
    """
    if path is None:
        return {}
    data = read_config_file(path)
    loose = sorted(map(str, (k for k in data if k not in SECTIONS)))
    # No knob takes a mapping: a loose key holding one is a misspelt section, not a flat file.
    misspelt = sorted(str(k) for k, v in data.items() if k not in SECTIONS and isinstance(v, dict))
    if misspelt:
        raise ValueError(f"config file {path}: unknown section {misspelt[0]!r}; the sections are "
                         f"{', '.join(SECTIONS)}")
    if len(loose) == len(data) and data:  # no sections: the keys of the one section this command reads
        if len(wanted) != 1:
            raise ValueError(f"config file {path} has keys ({', '.join(loose[:5])}) outside a "
                             f"section; put them under {', '.join(s + ':' for s in wanted)}")
        return {wanted[0]: dict(data)}
    if loose:
        raise ValueError(f"config file {path}: unknown section {loose[0]!r}; the sections are "
                         f"{', '.join(SECTIONS)}")
    out = {}
    for name in wanted:
        section = data.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ValueError(f"config file {path}: section '{name}' must be a mapping, "
                             f"got {type(section).__name__}")
        out[name] = dict(section)
    return out


def load_sections(path: str | Path | None, classes: dict[str, type[ConfigSection]],
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Each wanted section (``classes``: name -> its config class) from the file, then its flags.

    Raises:
        ValueError: the file or a key/value is invalid (named in the message).
    """
    found = file_sections(path, list(classes))
    where = f" in {path}" if path is not None else ""
    # A flag not given is None: it overrides nothing (a null in the file is the file's value).
    flags = {name: {k: v for k, v in (overrides or {}).get(name, {}).items() if v is not None} for name in classes}
    return {name: cls.from_layers(found.get(name, {}), flags[name], where=where if name in found else "")
            for name, cls in classes.items()}
