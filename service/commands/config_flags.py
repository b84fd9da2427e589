"""CLI flags generated from a pydantic config: every config key is a flag, with its help text; and the
one way a command builds its configs (the ``--config`` file's sections, then the flags)."""

from __future__ import annotations

import argparse
import typing
from typing import Any, Literal

from pydantic import BaseModel

from schemas.config_file import ConfigSection, load_sections


def add_config_flags(parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: set[str] = frozenset()) -> None:
    """One ``--kebab-name`` flag per field; default None so only given flags override the file."""
    group = parser.add_argument_group(f"{model.__name__} (also keys of --config)")
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or ''} (default: {field.default!r})"
        annotation = field.annotation
        args = typing.get_args(annotation)
        origin = typing.get_origin(annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(args)
        elif origin is tuple:
            kwargs.update(nargs=len(args), type=args[0], metavar=tuple(name.upper() for _ in args))
        else:
            base = next((a for a in args if a is not type(None)), annotation) if args else annotation
            kwargs["type"] = base if base in (int, float, str) else str
        group.add_argument(flag, **kwargs)


def overrides_from(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The config keys given on the command line."""
    return {name: getattr(args, name) for name in model.model_fields
            if getattr(args, name, None) is not None}


def check_work_flag(args: argparse.Namespace) -> None:
    """``--work`` (`beacon train`, `beacon run`) names the local folder of a run published to a URL
    ``--out``; with a local ``--out`` that folder is the run itself."""
    from schemas import storage

    if args.work and not storage.is_url(args.out):
        raise ValueError(f"--work {args.work}: only with an object-store --out (a local --out is the "
                         "folder the run works in)")


def load_configs(args: argparse.Namespace, classes: dict[str, type[ConfigSection]], *,
                 skip: dict[str, set[str]] | None = None,
                 extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Each section the command reads: ``--config``'s section, overridden by the flags given.

    Args:
        classes: section name -> config class, e.g. ``{"train": TrainConfig}``.
        skip: per section, keys that are not flags of this command.
        extra: per section, further overrides (e.g. ``--no-progress``).
    """
    overrides = {}
    for name, cls in classes.items():
        flags = {k: v for k, v in overrides_from(args, cls).items() if k not in (skip or {}).get(name, set())}
        overrides[name] = {**flags, **(extra or {}).get(name, {})}
    return load_sections(getattr(args, "config", None), classes, overrides)
