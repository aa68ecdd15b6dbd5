"""Named plug-ins as `module:attr` strings, imported only when first used (so `pov --help` stays light)."""

from __future__ import annotations

import importlib
from typing import Any


def load(table: dict[str, str], name: str) -> Any:
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)
