"""Module ``__getattr__`` for packages whose heavy names are imported on first use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, sources: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``package`` that imports each name in ``sources`` from its submodule.

    ``sources`` maps a public name to the submodule (relative to ``package``) defining it. The
    value is cached in the package's namespace, so each name costs one import, once.
    """

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
