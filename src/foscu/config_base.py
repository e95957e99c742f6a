"""``base:`` in a preset or config file: start from another preset (or file) and change only some keys.

``base: proof`` plus ``scarcity: {...}`` is the proof preset with a scarcity section: mappings merge key by
key, any other value (a list, a number) replaces the base's. A file's ``base`` that is no preset is read
relative to the file's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from foscu.errors import InputError


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: nested mappings merged, everything else taken from ``child``."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def with_base(
    raw: dict[str, Any], source: str, presets: tuple[str, ...], read: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """``raw`` merged over the config its ``base`` names (read with ``read``), without the ``base`` key."""
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base:
        raise InputError(
            source, f"base: must name a preset ({', '.join(presets)}) or a YAML file, got {base!r}"
        )
    if base not in presets and source not in presets and not Path(base).is_absolute():
        base = str(Path(source).parent / base)
    return merge(read(base), raw)
