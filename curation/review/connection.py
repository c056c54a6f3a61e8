"""Where review commands find Argilla, and the errors they raise.

Resolution order: ``ARGILLA_API_URL`` + ``ARGILLA_API_KEY`` (a team deployment); else a config file
(``$REFINERY_REVIEW_CONFIG`` or ``<workspace>/review.json`` with ``api_url`` and ``api_key`` or ``api_key_file``);
else the local server started by ``refinery review serve`` (its URL in ``argilla/server.json``, the owner key in
the 0600 file ``argilla/owner.json``). Every command then uses the same SDK client code. The key is never
printed, logged or stored in the catalog: :class:`Connection` hides it from ``repr``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argilla as rg

OWNER_USERNAME = "argilla"  # argilla-server's default owner (``database users create_default``)
CONFIG_ENV = "REFINERY_REVIEW_CONFIG"
REVIEW_DIR = "argilla"


class ReviewError(Exception):
    """A review command cannot do what was asked (bad round, no server, missing setup): exit code 2."""


class ReviewServerError(ReviewError):
    """Argilla failed or could not be reached; nothing half-done is lost, rerun the command to resume."""


@dataclass(frozen=True)
class ReviewPaths:
    """Files of the local review server inside a workspace (all under ``<workspace>/argilla``)."""

    workspace: Path

    @property
    def root(self) -> Path:
        return self.workspace / REVIEW_DIR

    @property
    def home(self) -> Path:
        """ARGILLA_HOME_PATH: the server's SQLite database lives here."""
        return self.root / "home"

    @property
    def credentials(self) -> Path:
        return self.root / "owner.json"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    @property
    def redis_log(self) -> Path:
        return self.root / "redis.log"


@dataclass(frozen=True)
class Connection:
    """An Argilla deployment and the key to use it (``repr`` never shows the key)."""

    api_url: str
    api_key: str = field(repr=False)
    source: str  # 'env', 'config:<path>' or 'local:<workspace>'

    def client(self, timeout: int = 60, retries: int = 0) -> rg.Argilla:
        """The SDK client (the argilla package, imported on first use)."""
        import argilla as rg

        with server_errors(self):
            return rg.Argilla(api_url=self.api_url, api_key=self.api_key, timeout=timeout, retries=retries)


def _write_private(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON readable by the owner only (created 0600, never world-readable even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
    os.chmod(path, 0o600)


def owner_credentials(paths: ReviewPaths) -> dict[str, str]:
    """The local server's owner key and UI password: ``ARGILLA_API_KEY`` when set, else generated once.

    Kept in ``argilla/owner.json`` (mode 0600); a file that others can read is refused.
    """
    stored: dict[str, str] = {}
    if paths.credentials.exists():
        mode = stat.S_IMODE(paths.credentials.stat().st_mode)
        if mode & 0o077:
            raise ReviewError(f"{paths.credentials} is readable by others (mode {mode:o}): chmod 600 it")
        stored = json.loads(paths.credentials.read_text(encoding="utf-8"))
    wanted = {
        "username": OWNER_USERNAME,
        "api_key": os.environ.get("ARGILLA_API_KEY") or stored.get("api_key") or "rfy." + secrets.token_urlsafe(32),
        "password": stored.get("password") or secrets.token_urlsafe(18),
    }
    if wanted != stored:
        _write_private(paths.credentials, wanted)
    return wanted


def save_server_state(paths: ReviewPaths, state: dict[str, Any]) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.state.write_text(json.dumps(state, indent=2), encoding="utf-8")


def load_server_state(paths: ReviewPaths) -> dict[str, Any] | None:
    if not paths.state.exists():
        return None
    state: dict[str, Any] = json.loads(paths.state.read_text(encoding="utf-8"))
    return state


def resolve_connection(workspace: Path) -> Connection:
    """The deployment review commands talk to (see the module docstring for the order)."""
    url, key = os.environ.get("ARGILLA_API_URL"), os.environ.get("ARGILLA_API_KEY")
    if url and key:
        return Connection(url.rstrip("/"), key, "env")
    config = Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else workspace / "review.json"
    if config.exists():
        data = json.loads(config.read_text(encoding="utf-8"))
        api_key = data.get("api_key")
        if api_key is None and data.get("api_key_file"):
            api_key = Path(data["api_key_file"]).expanduser().read_text(encoding="utf-8").strip()
        if not data.get("api_url") or not api_key:
            raise ReviewError(f"{config}: needs api_url and api_key (or api_key_file)")
        return Connection(str(data["api_url"]).rstrip("/"), str(api_key), f"config:{config}")
    paths = ReviewPaths(workspace)
    state = load_server_state(paths)
    if state is None or not paths.credentials.exists():
        raise ReviewError(
            "no Argilla server: run `refinery review serve`, or set ARGILLA_API_URL and ARGILLA_API_KEY "
            f"(or write {config}) to use a team deployment"
        )
    return Connection(str(state["url"]), owner_credentials(paths)["api_key"], f"local:{workspace}")


@contextlib.contextmanager
def server_errors(connection: Connection, doing: str = "talking to Argilla") -> Iterator[None]:
    """Turn SDK and HTTP failures into :class:`ReviewServerError` with a one-line cause (never the key)."""
    import httpx
    from argilla._exceptions import ArgillaError

    try:
        yield
    except (httpx.HTTPError, ArgillaError, ConnectionError) as exc:
        cause = " ".join(str(exc).split()).replace(connection.api_key, "***")[:400]
        raise ReviewServerError(
            f"{doing} at {connection.api_url} failed ({type(exc).__name__}: {cause}); "
            "what was done is recorded, rerun the command to resume"
        ) from exc
