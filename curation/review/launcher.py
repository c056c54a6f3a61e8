"""Run argilla-server with Refinery's SQL search backend. Executed by the Argilla server venv's python.

    <server-venv>/bin/python launcher.py --host 127.0.0.1 --port 6900 --credentials FILE [--redis-substitute]

Order matters: the Redis substitute (when asked) patches ``redis.from_url`` before anything of argilla_server is
imported (its job queues connect at import); ``sql_search`` registers the search engine before
``argilla_server._app`` is imported; then the database is migrated, the owner user is created from the 0600
credentials file (nothing secret is printed or passed on a command line) and uvicorn serves the app.
Environment (set by ``refinery review serve``): ARGILLA_HOME_PATH, ARGILLA_SEARCH_ENGINE, ARGILLA_REDIS_URL,
ARGILLA_ENABLE_TELEMETRY.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class RedisSubstitute:
    """Stands in for a Redis connection when no redis-server is available.

    argilla-server pings Redis at start-up and uses it only to queue background jobs (record statuses after a
    distribution change, Hugging Face Hub import/export, webhooks). Here every command succeeds and does
    nothing: jobs are accepted and dropped. Reads return None, pipelines execute to an empty list.
    """

    def ping(self, *_: Any, **__: Any) -> bool:
        return True

    def info(self, *_: Any, **__: Any) -> dict[str, Any]:
        return {"redis_version": "7.0.0"}

    def pipeline(self, *_: Any, **__: Any) -> RedisSubstitute:
        return self

    def execute(self, *_: Any, **__: Any) -> list[Any]:
        return []

    def __enter__(self) -> RedisSubstitute:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def command(*_: Any, **__: Any) -> Any:
            return self if name in ("multi", "watch") else None

        return command


def _install_redis_substitute() -> None:
    import redis

    def from_url(*_: Any, **__: Any) -> RedisSubstitute:
        return RedisSubstitute()

    redis.from_url = from_url
    redis.Redis.from_url = staticmethod(from_url)


def _load_search_engine() -> None:
    spec = importlib.util.spec_from_file_location("refinery_sql_search", HERE / "sql_search.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {HERE / 'sql_search.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


async def _serve(host: str, port: int, credentials: dict[str, str]) -> None:
    import uvicorn
    from argilla_server._app import app
    from argilla_server.cli.database.users.create_default import _create_default

    await _create_default(credentials["api_key"], credentials["password"], True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False)
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--credentials", type=Path, required=True, help="JSON file with api_key and password")
    parser.add_argument("--redis-substitute", action="store_true", help="no redis-server: patch redis.from_url")
    args = parser.parse_args(argv)

    credentials = json.loads(args.credentials.read_text(encoding="utf-8"))
    if args.redis_substitute:
        _install_redis_substitute()
    _load_search_engine()
    from argilla_server.cli.database.migrate import migrate_db

    migrate_db(revision="head")
    asyncio.run(_serve(args.host, args.port, credentials))


if __name__ == "__main__":
    main()
