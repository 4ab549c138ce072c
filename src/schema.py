"""Typed schemas for config groups: a dataclass per group, checked against the resolved config.

A schema dataclass is never instantiated. Its fields name the keys a group may have, their
annotations the types, ``setting(...)`` the ranges and choices; a field with a default may be left
out of the YAML, one without must be there. ``problems(node, Schema, "trainer")`` lists every
departure as one line, ``<what was wrong>; <what to do>``.

Why not Hydra structured configs in the defaults list: a typed node converts what it holds (an int
in a float field becomes 3.0, so ``warmup: 200`` would read 200.0), which changes the resolved
config and with it every run's identity (``src/records.py`` hashes it); task families also differ
in their keys. So the composed config stays as the YAMLs make it, and is checked here before any
model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

REQUIRED = dataclasses.MISSING


class ConfigError(ValueError):
    """A config value that cannot be used; the message is one line: what is wrong; what to do."""


def setting(
    default: Any = REQUIRED,
    *,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: Iterable | None = None,
) -> Any:
    """A schema field: ``default`` (any value) makes the key optional; bounds and choices constrain it."""
    metadata = {"ge": ge, "gt": gt, "lt": lt, "choices": list(choices) if choices is not None else None}
    return dataclasses.field(default=default, metadata=metadata)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def shown(value: Any) -> str:
    return "null" if value is None else repr(value)


def describe(tp: Any) -> str:
    """How a type reads in a message: 'an integer', 'a list of strings', 'a number or null'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [describe(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin is list:
        item = describe(args[0]) if args else "value"
        return "a list of " + (item.split(" ", 1)[1] + "s" if item.startswith(("a ", "an ")) else item)
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Any: "any value"}
    return names.get(tp, str(tp))


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a float", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` has type ``tp`` (containers checked item by item elsewhere)."""
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp) or tp
    if origin is list:
        return isinstance(value, list)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return isinstance(value, origin)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bound_text(meta: dict, tp: Any) -> str | None:
    ops = {"ge": ">=", "gt": ">", "lt": "<"}
    parts = [f"{op} {_number(meta[k])}" for k, op in ops.items() if meta.get(k) is not None]
    if not parts:
        return None
    return f"{describe(_plain(tp))} {' and '.join(parts)}"


def _plain(tp: Any) -> Any:
    """``int | None`` -> ``int``: the type a bound applies to."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def in_range(value: float, meta: dict) -> bool:
    ge, gt, lt = meta.get("ge"), meta.get("gt"), meta.get("lt")
    if isinstance(value, float) and math.isnan(value):
        return False
    return (ge is None or value >= ge) and (gt is None or value > gt) and (lt is None or value < lt)


def value_problems(value: Any, tp: Any, key: str, meta: dict | None = None) -> list[str]:
    """What is wrong with one value of type ``tp`` at ``key`` (empty when nothing is)."""
    meta = meta or {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return []
        options = [a for a in args if a is not type(None)]
        fitting = [a for a in options if _fits(value, a)]
        if not fitting:
            return [f"{key}={shown(value)} is {kind_of(value)}; set it to {describe(tp)}"]
        return value_problems(value, fitting[0], key, meta)
    if not _fits(value, tp):
        return [f"{key}={shown(value)} is {kind_of(value)}; set it to {describe(tp)}"]
    if dataclasses.is_dataclass(tp):
        return problems(value, tp, key)
    if origin is list and args:
        return [p for i, item in enumerate(value) for p in value_problems(item, args[0], join(key, i), meta)]
    if origin is dict and args:
        return [p for k, item in value.items() for p in value_problems(item, args[1], join(key, k), meta)]
    if meta.get("choices") is not None and value not in meta["choices"]:
        return [f"{key}={shown(value)} is not supported; use one of {meta['choices']}"]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not in_range(value, meta):
        return [f"{key}={shown(value)} is out of range; set it to {bound_text(meta, tp)}"]
    return []


def unknown_key(path: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"{join(path, key)} is not a known key; rename it to {join(path, close[0])} or remove it"
    return f"{join(path, key)} is not a known key; remove it (known keys of {path or 'the config'}: {', '.join(known)})"


def problems(node: Any, schema: type, path: str = "") -> list[str]:
    """Every key of ``node`` (a resolved mapping) that ``schema`` does not allow, as one line each.

    After the fields, a schema's optional ``relations(node, path)`` classmethod checks what
    concerns several keys at once (it runs only when each key is fine on its own).
    """
    if not isinstance(node, dict):
        return [f"{path}={shown(node)} is {kind_of(node)}; set it to a mapping"]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    found = [unknown_key(path, key, list(fields)) for key in node if key not in fields]
    for name, field in fields.items():
        if name not in node:
            if field.default is REQUIRED and field.default_factory is REQUIRED:
                found.append(
                    f"{join(path, name)} is missing; add it to the YAML or pass +{join(path, name)}=<value>"
                )
            continue
        found += value_problems(node[name], hints[name], join(path, name), dict(field.metadata))
    if not found and hasattr(schema, "relations"):
        found += schema.relations(node, path)
    return found


def raise_problems(found: list[str]) -> None:
    """One ConfigError for all of them, on one line, the first one first."""
    if not found:
        return
    more = f" (and {len(found) - 1} more: {'; '.join(found[1:])})" if len(found) > 1 else ""
    raise ConfigError(found[0] + more)
