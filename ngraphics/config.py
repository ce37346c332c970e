"""Strict configs: frozen dataclasses filled from dicts (YAML/JSON), with `a.b=c` overrides.

Every config class is a frozen dataclass whose fields carry their defaults. `from_dict` checks each key
(unknown keys fail with the nearest valid name), converts the value to the field's type and names the key
in every error. A field typed `Literal[...]` only accepts those values; nested dataclasses recurse.
A class may define `validate(self, where)` for checks across fields (called after construction).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from ngraphics.errors import ConfigError, DataError, choice_message, unknown_key_message

T = TypeVar("T")


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: `1e-4` and `1E5` are numbers (YAML 1.1, which PyYAML
    follows, wants a dot, `1.0e-4`, and reads `1e-4` as a string)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with `YamlLoader` (safe: no Python objects)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def from_dict(cls: type[T], data: dict | None, where: str = "config", *, strict: bool = True) -> T:
    """Build dataclass `cls` from `data`.

    Args:
        cls: a dataclass type.
        data: mapping of field name -> value; missing fields take the class defaults.
        where: prefix for error messages, e.g. `configs/nerf/lego.yaml: model.encoding`.
        strict: unknown keys raise ConfigError; with strict=False they are returned to the caller's
            attention through the `__unknown_keys__` attribute instead (tinycudann compatibility).
    """
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs, unknown = {}, []
    for key, value in data.items():
        if key not in fields:
            unknown.append(key)
            continue
        kwargs[key] = convert(value, hints[key], f"{where}.{key}" if where else key)
    if unknown and strict:
        raise ConfigError(unknown_key_message(where, unknown[0], cls.__name__, fields))
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field without default is missing
        raise ConfigError(f"{where}: {err}") from None
    if hasattr(obj, "validate"):
        obj.validate(where)
    if unknown:
        object.__setattr__(obj, "__unknown_keys__", tuple(unknown))
    return obj


def convert(value: Any, hint: Any, where: str) -> Any:
    """Convert one config value to the type `hint`, or raise ConfigError naming `where`."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        options = get_args(hint)
        if value not in options:
            raise ConfigError(choice_message(where, value, [str(o) for o in options]))
        return value
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if value != value:
            raise ConfigError(f"{where}: expected a number, got NaN")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain dicts/lists, ready for YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def strip_json_comments(text: str) -> str:
    """Remove `//` line comments and `/* */` block comments outside strings (tinycudann accepts them)."""
    pattern = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/', re.S)
    return pattern.sub(lambda m: m.group(1) or "", text)


def load_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON (comments allowed) file into a dict; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"{path}: cannot read config ({err.strerror or err})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(strip_json_comments(text))
        else:
            data = load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        line = str(err).splitlines()[0]
        raise DataError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({line})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], value parsed as YAML, so `3`, `1e-2`, `true`, `[1, 2]` get their types)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value, e.g. --set trainer.steps=2000")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `a.b=c` override applied (creating nested mappings as needed)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def deep_merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: values in `update` win; nested mappings merge key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def configs_root() -> Path:
    """Folder of the bundled configs: `ngraphics.configs` when installed, else the checkout's configs/."""
    try:
        import ngraphics.configs as packaged

        return Path(packaged.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parents[1] / "configs"


__all__ = [
    "configs_root",
    "from_dict", "convert", "to_dict", "load_mapping", "strip_json_comments",
    "parse_override", "apply_overrides", "deep_merge", "typing",
]

