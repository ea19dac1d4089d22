"""Typed configs: YAML files read into dataclasses, with dotted `--set key=value` overrides.

Unknown keys and values of the wrong type are errors that name the key (`optimizer.lr: expected float,
got 'fast'`). Every run writes its resolved config next to its checkpoints (`dump_yaml`).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")
SECTION_DEFAULT = "jaxmath.section_default"  # field metadata: missing keys of this section keep the default's values


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type; the message names the dotted key."""


def section(default: T) -> T:
    """A nested dataclass field whose mapping may give only some keys: the others keep `default`'s values (not
    the class's own defaults), so one settings type can carry different defaults in different sections."""
    return dataclasses.field(default_factory=lambda: default, metadata={SECTION_DEFAULT: True})


def _moved_keys_error(cls: type, data: Mapping[str, Any], keys: list[str], prefix: str) -> ConfigError:
    """The error for keys a section used to take, showing where each one lives now (`MOVED_KEYS`)."""
    moved = cls.MOVED_KEYS  # type: ignore[attr-defined]
    spelled = []
    for key in keys:
        *sections, last = moved[key].split(".")
        nested = f"{last}: {json.dumps(data[key], ensure_ascii=False, default=str)}"  # JSON is YAML's flow style
        for name in reversed(sections):
            nested = f"{name}: {{{nested}}}"
        spelled.append(f"{prefix}{key} is now {prefix}{moved[key]} (write `{nested}`)")
    return ConfigError("; ".join(spelled))


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str, base: Any = None) -> Any:
    """Check and coerce one value to the annotated type; recurse into dataclasses, lists, dicts, optionals.
    `base`: a dataclass instance whose values fill the keys a section's mapping leaves out."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # an optional section or value: its own error says what is wrong
            return _convert(value, options[0], key, base)
        errors = []
        for option in options:
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} matches none of {tp} ({'; '.join(errors)})")
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.", base=base if isinstance(base, tp) else None)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-5" as a string
        except ValueError:
            pass
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "", base: T | None = None) -> T:
    """Build dataclass `cls` from a mapping; unknown or ill-typed keys raise ConfigError naming them (a key the
    class lists in `MOVED_KEYS` names its new place). Keys left out take `base`'s values, else the defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    moved = [k for k in unknown if k in getattr(cls, "MOVED_KEYS", {})]
    if moved:
        raise _moved_keys_error(cls, data, moved, prefix)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
                          f"(known under {prefix or 'top level'}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            default = f.default_factory() if f.metadata.get(SECTION_DEFAULT) else None
            kwargs[name] = _convert(data[name], hints[name], prefix + name, default)
        elif base is not None:
            kwargs[name] = getattr(base, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {prefix + name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (value parsed as YAML) to a nested dict, in order."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key.path=value")
        path, raw = override.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        keys = path.strip().split(".")
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {path}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read YAML (optional) + overrides into dataclass `cls`."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({err})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    return from_dict(cls, apply_overrides(data, overrides or []))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
