"""Human review in Argilla: a local server (or a team deployment), push flagged records, pull decisions.

Modules: ``connection`` (where Argilla is, errors), ``server`` (serve/stop a local argilla-server from its own
venv), ``launcher`` and ``sql_search`` (run inside that server's venv: never imported here), ``push``, ``pull``
and ``status`` (status, calibrate). See docs/REVIEW.md.
"""

from curation.review.connection import Connection, ReviewError, ReviewServerError, resolve_connection

__all__ = ["Connection", "ReviewError", "ReviewServerError", "resolve_connection"]
