"""Where review commands find Argilla, and the errors they raise.

Resolution order: ``ARGILLA_API_URL`` + ``ARGILLA_API_KEY`` (a team deployment); else a config file
(``$REFINERY_REVIEW_CONFIG`` or ``<workspace>/review.json`` with ``api_url`` and ``api_key`` or ``api_key_file``);
else the local server started by ``refinery review serve`` (its URL in ``argilla/server.json``, the owner key in
the 0600 file ``argilla/owner.json``). Every command then uses the same SDK client code. The key is never
printed, logged or stored in the catalog: :class:`Connection` hides it from ``repr``.

Every call to Argilla goes through :meth:`Connection.call`: a server that cannot be reached, drops the connection,
times out or answers 5xx (or 429) is retried a few times with exponential backoff (:class:`RetryPolicy`, set by
``REFINERY_REVIEW_ATTEMPTS`` / ``_BACKOFF`` / ``_TIMEOUT`` or the config file's ``attempts`` / ``backoff`` /
``timeout``), then the command stops with a :class:`ReviewServerError` naming the URL, never the key. The SDK's own
``retries`` only retry establishing a connection (httpcore), never a 5xx or a read timeout, so they stay off.
A refused call (401/403: the key's user may not do this) is not retried: :class:`ReviewPermissionError`.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from schemas.errors import InputError
from schemas.progress import log

if TYPE_CHECKING:
    import argilla as rg

OWNER_USERNAME = "argilla"  # argilla-server's default owner (``database users create_default``)
CONFIG_ENV = "REFINERY_REVIEW_CONFIG"
REVIEW_DIR = "argilla"
ATTEMPTS_ENV = "REFINERY_REVIEW_ATTEMPTS"
BACKOFF_ENV = "REFINERY_REVIEW_BACKOFF"
TIMEOUT_ENV = "REFINERY_REVIEW_TIMEOUT"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REFUSED_STATUSES = frozenset({401, 403})

T = TypeVar("T")

#: How :meth:`Connection.call` waits between attempts (tests replace it to record the waits).
sleep: Callable[[float], None] = time.sleep


class ReviewError(InputError):
    """A review command cannot do what was asked (bad round, no server, missing setup): exit code 2."""


class ReviewServerError(ReviewError):
    """Argilla failed or could not be reached; nothing half-done is lost, rerun the command to resume."""


class ReviewPermissionError(ReviewError):
    """Argilla refused the call (401/403): the API key's user may not do it (e.g. an annotator's key)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of calls to Argilla: ``attempts`` tries in all, waiting ``backoff`` s, then twice as long
    each time (at most ``max_wait`` s); each HTTP request may take ``timeout`` s."""

    attempts: int = 4
    backoff: float = 0.5
    max_wait: float = 8.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_wait < 0 or self.timeout <= 0:
            raise ReviewError(
                f"retry settings out of range: attempts {self.attempts} (>= 1), backoff {self.backoff} (>= 0), "
                f"max_wait {self.max_wait} (>= 0), timeout {self.timeout} (> 0)"
            )

    def wait(self, failed: int) -> float:
        """Seconds to wait after the ``failed``-th attempt failed (1-based)."""
        return float(min(self.max_wait, self.backoff * 2 ** (failed - 1)))

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None) -> RetryPolicy:
        """Defaults, overridden by a config file's keys, overridden by the environment."""
        given = config or {}
        values: dict[str, Any] = {k: given[k] for k in ("attempts", "backoff", "timeout") if k in given}
        for key, env in (("attempts", ATTEMPTS_ENV), ("backoff", BACKOFF_ENV), ("timeout", TIMEOUT_ENV)):
            if os.environ.get(env):
                values[key] = os.environ[env]
        try:
            return cls(
                attempts=int(values.get("attempts", cls.attempts)),
                backoff=float(values.get("backoff", cls.backoff)),
                timeout=float(values.get("timeout", cls.timeout)),
            )
        except (TypeError, ValueError) as exc:
            raise ReviewError(f"retry settings ({ATTEMPTS_ENV}, {BACKOFF_ENV}, {TIMEOUT_ENV}): {exc}") from exc


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
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def client(self, timeout: float | None = None, retries: int = 0) -> rg.Argilla:
        """The SDK client (the argilla package, imported on first use); creating it calls ``/api/v1/me``, retried.

        ``timeout`` defaults to the retry policy's; ``retries`` are the SDK's own (connection set-up only).
        """
        import argilla as rg

        wait = self.retry.timeout if timeout is None else timeout
        return self.call(
            "signing in",
            lambda: rg.Argilla(api_url=self.api_url, api_key=self.api_key, timeout=wait, retries=retries),
        )

    def call(self, doing: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried by the policy when Argilla is down, times out or answers 5xx; any failure that is
        left becomes a :class:`ReviewError` naming ``doing`` and the URL (never the key).

        ``fn`` must be safe to repeat (a lookup, or an upsert by id, as every call of push and pull is).
        """
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                if not _is_argilla_failure(exc):
                    raise
                if attempt >= self.retry.attempts or not retryable(exc):
                    raise review_error(self, doing, exc, attempt) from exc
                wait = self.retry.wait(attempt)
                log(
                    f"Argilla at {self.api_url}: {doing} failed ({_describe(self, exc)[:160]}); "
                    f"attempt {attempt + 1} of {self.retry.attempts} in {wait:g}s"
                )
                sleep(wait)
                attempt += 1


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
        return Connection(url.rstrip("/"), key, "env", RetryPolicy.load())
    config = Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else workspace / "review.json"
    if config.exists():
        data = json.loads(config.read_text(encoding="utf-8"))
        api_key = data.get("api_key")
        if api_key is None and data.get("api_key_file"):
            api_key = Path(data["api_key_file"]).expanduser().read_text(encoding="utf-8").strip()
        if not data.get("api_url") or not api_key:
            raise ReviewError(f"{config}: needs api_url and api_key (or api_key_file)")
        return Connection(str(data["api_url"]).rstrip("/"), str(api_key), f"config:{config}", RetryPolicy.load(data))
    paths = ReviewPaths(workspace)
    state = load_server_state(paths)
    if state is None or not paths.credentials.exists():
        raise ReviewError(
            "no Argilla server: run `refinery review serve`, or set ARGILLA_API_URL and ARGILLA_API_KEY "
            f"(or write {config}) to use a team deployment"
        )
    return Connection(str(state["url"]), owner_credentials(paths)["api_key"], f"local:{workspace}", RetryPolicy.load())


def _is_argilla_failure(exc: BaseException) -> bool:
    import httpx
    from argilla._exceptions import ArgillaError

    return isinstance(exc, httpx.HTTPError | ArgillaError | ConnectionError | TimeoutError)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK or httpx error (the SDK raises its own errors from ``HTTPStatusError``)."""
    import httpx

    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, httpx.HTTPStatusError):
            return int(seen.response.status_code)
        seen = seen.__cause__ or seen.__context__
    return None


def retryable(exc: BaseException) -> bool:
    """Worth another try: the server is down, dropped the connection, timed out, or answered 5xx / 429."""
    import httpx

    status = http_status(exc)
    if status is not None:
        return status in RETRY_STATUSES
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return False
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


def refused(exc: BaseException) -> bool:
    """Argilla (or the SDK's own role check) refused: the key's user may not do this."""
    from argilla._exceptions import ArgillaCredentialsError, ForbiddenError, UnauthorizedError

    return http_status(exc) in REFUSED_STATUSES or isinstance(
        exc, ForbiddenError | UnauthorizedError | ArgillaCredentialsError
    )


def _describe(connection: Connection, exc: BaseException) -> str:
    cause = " ".join(str(exc).split()).replace(connection.api_key, "***")
    return f"{type(exc).__name__}: {cause}"


def review_error(connection: Connection, doing: str, exc: BaseException, attempts: int = 1) -> ReviewError:
    """The one-line error for a failed call to Argilla (the key is masked should the server echo it)."""
    cause = _describe(connection, exc)[:400]
    if refused(exc):
        return ReviewPermissionError(
            f"{doing} at {connection.api_url} was refused ({cause}): the API key in use belongs to a user who may "
            "not do this; push and pull need an owner's or admin's key (annotators answer in the web UI)"
        )
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return ReviewServerError(
        f"{doing} at {connection.api_url} failed{tries} ({cause}); "
        "what was done is recorded, rerun the command to resume"
    )
