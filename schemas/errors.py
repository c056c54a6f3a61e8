"""The two kinds of failure every package reports, so the CLI maps exceptions to exit codes in one place without
knowing each library's error classes.

- :class:`InputError`: what the user asked for is wrong or impossible (an unknown id, bad arguments or
  configuration, a step run out of order). The CLI prints one line and exits 2.
- :class:`Failure`: a verification, gate or threshold failed, or stored data is damaged. The CLI prints one line
  and exits 1.

Anything else is a bug and ends with a traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """The user's input is wrong: an unknown id, bad arguments or configuration, a step run out of order (exit 2)."""


class Failure(Exception):
    """A verification, gate or threshold failed, or stored data is damaged (exit 1)."""
