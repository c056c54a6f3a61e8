"""Optional dependencies of the training stage, checked once with an error that names the install command."""

from __future__ import annotations

import importlib

INSTALL_HINT = "pip install 'refinery[train]'"
_TRAIN_MODULES = ("torch", "transformers", "peft", "safetensors")


class MissingDependencyError(ImportError):
    """A library the training stage needs is not installed."""


def require_train_deps(*extra: str) -> None:
    """Raise :class:`MissingDependencyError` naming every missing module and the command that installs them."""
    missing = []
    for name in (*_TRAIN_MODULES, *extra):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"training needs {', '.join(missing)} which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"{INSTALL_HINT} (install the pinned torch first, see the Makefile)"
        )
