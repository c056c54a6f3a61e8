"""`refinery serve`: the HTTP API over the same library as the CLI (docs/SERVICE.md).

- ``app.py``: ``create_app`` (the FastAPI application: routers, the job dispatcher's lifespan, error mapping).
- ``auth.py``: roles (viewer < engineer < admin) and the ``require_role`` dependency (bearer token or cookie).
- ``tokens.py``: API tokens, shown once and stored as SHA-256 in the catalog (``refinery token ...``).
- ``read_routes.py`` + ``queries.py``: the read endpoints and ``POST /sql``; ``models.py``: their response models.
- ``jobs.py``, ``job_worker.py``, ``jobs_routes.py``: persisted jobs, run one at a time as CLI child processes.
- ``dashboard.py``: the server-rendered pages under ``/ui``.

FastAPI and uvicorn come with the ``service`` extra; nothing outside this package and ``refinery.cli_service``
imports them.
"""
