"""The errors the application layer raises itself (the libraries raise their own, on the same two bases from
:mod:`schemas.errors`): the CLI maps both to exit codes in one place, ``refinery.cli_context.cli_errors``."""

from __future__ import annotations

from schemas.errors import Failure, InputError


class UsageError(InputError):
    """Bad arguments or configuration, or a step run out of order: exit code 2."""


class CheckFailed(Failure):
    """A verification, gate or threshold failed: exit code 1."""
