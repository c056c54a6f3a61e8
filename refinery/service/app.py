"""The FastAPI application of `refinery serve`: routers, the job dispatcher's lifespan and the error mapping.

Library errors become one-line JSON errors ``{"detail": "..."}``: a wrong input (``schemas.errors.InputError``:
an unknown id, bad SQL, a path outside the allowed folders) is 400, a catalog locked past its wait is 503 with
``Retry-After``, any other ``Failure`` (a verification that failed) 500. Anything else is a bug and is logged with
its traceback (never a token: requests carry tokens in headers only, and no header is logged).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from refinery.service.analyst_pool import AnalystPool
from refinery.service.models import ErrorOut
from refinery.workspace import Workspace
from schemas.catalog import CatalogLockedError
from schemas.errors import Failure, InputError

#: The error responses every authenticated route may give, for the OpenAPI document (schemathesis checks them).
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or a token that is unknown or revoked."},
    403: {"model": ErrorOut, "description": "The token's role is below the route's."},
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "A wrong input: an unknown id, bad SQL, a refused path."},
    **AUTH_RESPONSES,
    503: {"model": ErrorOut, "description": "The catalog stayed locked by a writer; retry."},
}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def create_app(root: Path, *, data_dirs: Sequence[Path] = (), run_jobs: bool = True) -> FastAPI:
    """The service over the workspace at ``root`` (which must exist, with its catalog migrated). ``data_dirs``:
    the server-side folders whose files an ingest job may read. ``run_jobs`` False starts no job dispatcher
    (jobs are still accepted and stay queued until a server that runs them starts)."""
    from refinery.service import dashboard, jobs_routes, read_routes, token_routes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = None
        if run_jobs:
            from refinery.service.job_worker import JobDispatcher

            dispatcher = JobDispatcher(app.state.workspace, app.state.data_dirs)
            dispatcher.recover()
            dispatcher.start()
        app.state.dispatcher = dispatcher
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()
            app.state.analyst_pool.close()

    app = FastAPI(
        title="Refinery",
        summary="Dataset curation and quality control for LLM fine-tuning, as a service.",
        description="The HTTP API of `refinery serve` (docs/SERVICE.md). Authenticate with "
        "`Authorization: Bearer <token>` (tokens come from `refinery token create`). Roles: viewer reads, engineer "
        "also runs jobs, admin also promotes, rolls back and manages tokens.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.workspace = Workspace(root.resolve())
    app.state.data_dirs = tuple(Path(d).resolve() for d in data_dirs)
    app.state.dispatcher = None
    app.state.analyst_pool = AnalystPool()  # worker processes for POST /sql, started on first use

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=400)

    @app.exception_handler(Failure)
    async def _failure(request: Request, exc: Failure) -> JSONResponse:
        if isinstance(exc, CatalogLockedError):
            return JSONResponse({"detail": one_line(exc)}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"detail": one_line(exc)}, status_code=500)

    app.add_middleware(AllowHeader)
    app.include_router(read_routes.router)
    app.include_router(token_routes.router, responses=ERROR_RESPONSES)
    app.include_router(jobs_routes.router, responses=ERROR_RESPONSES)
    app.include_router(dashboard.router)
    return app


class AllowHeader:
    """ASGI middleware: a 405 names in ``Allow`` every method of the path. Starlette names only those of the first
    route whose path matches, and FastAPI makes one route per method (``GET /tokens`` and ``POST /tokens``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                methods = sorted(
                    {m for route in scope["app"].routes if _matches(route, scope["path"]) for m in route.methods}
                )
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", ", ".join(methods).encode())]}
            await send(message)

        await self.app(scope, receive, sending)


def _matches(route: Any, path: str) -> bool:
    regex = getattr(route, "path_regex", None)
    return regex is not None and getattr(route, "methods", None) is not None and regex.match(path) is not None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refinery")
    except PackageNotFoundError:
        return "unknown"
