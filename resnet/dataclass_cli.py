"""A dataclass is a command line: one option per field, shared by ``train.cifar``/``train.imagenet`` and ``serve``.

A field made with ``option(default, help, ...)`` carries its help, choices, value parser, group and metavar in its
metadata; ``add_options`` turns each into ``--field-name``. The help states the default once: ``(default: X)`` is
added only when the help text does not already say what the default is, and never for an unset (None/empty)
default. With ``env_prefix`` every option also names its environment variable and parses to None when not typed,
so the caller can tell "typed" from "not typed" and fall back to the environment (``values_from``). A switch
(a bool that is False unless typed) states no default.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

from .errors import UsageError

__all__ = ["UsageParser", "add_options", "choices_of", "env_name", "flag", "option", "values_from"]


class UsageParser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        raise UsageError(message)


def option(
    default: Any,
    help: str,
    *,
    choices: Iterable[str] | type[enum.Enum] | None = None,
    parse: Callable[[str], Any] | None = None,
    group: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (``x_y`` is ``--x-y``)."""
    meta = {"help": help, "choices": choices_of(choices), "parse": parse, "group": group, "metavar": metavar}
    return field(default=default, metadata=meta)


def choices_of(choices: Iterable[str] | type[enum.Enum] | None) -> tuple[str, ...] | None:
    """The allowed values as strings: a str enum's values, or the iterable as a tuple."""
    if choices is None:
        return None
    if isinstance(choices, type) and issubclass(choices, enum.Enum):
        return tuple(str(m.value) for m in choices)
    return tuple(choices)


def flag(name: str) -> str:
    """The option of field ``name``: ``max_iters`` -> ``--max-iters``."""
    return "--" + name.replace("_", "-")


def env_name(prefix: str, name: str) -> str:
    """The environment variable of field ``name``: ``RESNET_SERVE_`` + ``MAX_BATCH``."""
    return prefix + name.upper()


def _states_default(text: str) -> bool:
    return "default" in text.lower()


def help_text(f: dataclasses.Field, default: Any, env_prefix: str | None = None) -> str:
    """The field's help with its environment variable and, when the text does not say it, its default."""
    text = f.metadata["help"]
    extras = []
    if env_prefix is not None:
        extras.append(f"env {env_name(env_prefix, f.name)}")
    if default not in (None, "", False) and not _states_default(text):  # a switch is off unless typed
        shown = default.value if isinstance(default, enum.Enum) else default
        extras.append(f"default: {shown}".replace("%", "%%"))  # argparse formats help with %
    return f"{text} ({'; '.join(extras)})" if extras else text


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    env_prefix: str | None = None,
    skip: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    groups: Mapping[str, argparse._ArgumentGroup] | None = None,
    help_format: Callable[[str], str] = str,
) -> None:
    """One option per field of dataclass ``cls`` on ``parser`` (or the field's group in ``groups``).

    Booleans: ``bool | None`` and (with ``env_prefix``) every bool are ``--x`` / ``--no-x``; a plain bool defaulting
    to False without ``env_prefix`` is a switch. ``defaults`` overrides a field's default on this command line.
    """
    kinds = typing.get_type_hints(cls)
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        meta, kind = f.metadata, kinds[f.name]
        default = (defaults or {}).get(f.name, f.default)
        target = groups[meta["group"]] if groups and meta.get("group") else parser
        text = help_format(help_text(f, default, env_prefix))
        given = None if env_prefix is not None else default  # with the environment behind it: None = not typed
        if kind is bool and env_prefix is None and default is False:
            target.add_argument(flag(f.name), dest=f.name, action="store_true", help=text)
        elif kind is bool or kind == bool | None:
            target.add_argument(
                flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=given, help=text
            )
        else:
            choices = meta.get("choices")
            target.add_argument(
                flag(f.name),
                dest=f.name,
                type=meta.get("parse") or _base_type(kind),
                choices=choices,
                default=given,
                metavar=meta.get("metavar") or (f.name.upper() if choices is None else None),
                help=text,
            )


def _base_type(kind: Any) -> Callable[[str], Any]:
    """``int`` for ``int`` and ``int | None``; ``str`` for anything without a plain constructor."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    return base if base in (int, float, str) else str


def _from_env(f: dataclasses.Field, kind: Any, raw: str, env: str) -> Any:
    """The value of field ``f`` written as ``raw`` in environment variable ``env``."""
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise UsageError(f"{env} must be true or false, not {raw!r}")
    parse = f.metadata.get("parse") or _base_type(kind)
    try:
        value = parse(raw)
    except ValueError:
        raise UsageError(f"{env} must be a {getattr(parse, '__name__', 'value')}, not {raw!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(f"{env} must be one of {', '.join(choices)}, not {value!r}")
    return value


def values_from(cls: type, args: argparse.Namespace, environ: Mapping[str, str], env_prefix: str) -> dict[str, Any]:
    """The fields typed on the command line, else set in ``environ`` (``env_prefix`` + NAME); others are left out
    so the dataclass's defaults apply (flag > environment > default)."""
    kinds = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env = env_name(env_prefix, f.name)
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
        elif env in environ:
            values[f.name] = _from_env(f, kinds[f.name], environ[env], env)
    return values
