"""Who is asking: the API token of a request and the role it holds.

Roles, lowest first: ``viewer`` reads; ``engineer`` also runs jobs; ``admin`` also promotes, rolls back and forgets
(refinery/service/tokens.py ``ROLES``). A route states the lowest role it accepts::

    def route(principal: Principal = Depends(require_role("engineer"))) -> ...

The token comes from ``Authorization: Bearer <token>`` or, for the dashboard's pages, the ``refinery_token``
cookie its login form sets. A missing, unknown or revoked token is 401 (with ``WWW-Authenticate: Bearer``), a role
below the route's is 403. Neither the token nor its hash is ever logged or put in a response.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from refinery.service.tokens import TokenInfo, find_token, hash_token, role_rank
from refinery.workspace import Workspace
from schemas.catalog import CATALOG_NAME

COOKIE_NAME = "refinery_token"

_bearer = HTTPBearer(auto_error=False, description="An API token from `refinery token create`.")
_cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False, description="The dashboard's login cookie.")


@dataclass(frozen=True)
class Principal:
    """The holder of a valid token: its id, its name (the actor recorded with every write it makes) and role."""

    token_id: str
    name: str
    role: str


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, token: str | None) -> Principal:
    """The principal of ``token`` in the app's workspace; 401 when it is missing, unknown or revoked."""
    if not token:
        raise _unauthorized("an API token is required: Authorization: Bearer <token> (refinery token create)")
    info = _TOKENS.find(request.app.state.workspace, token)
    if info is None:
        raise _unauthorized("the API token is not valid (unknown or revoked)")
    principal = Principal(info.token_id, info.name, info.role)
    request.state.principal = principal
    return principal


def catalog_state(root: Path) -> tuple[int, ...]:
    """Size and modification time of the catalog and its write-ahead log: they change with every committed write
    (a token made or revoked included), so what was read from the catalog stays valid while they do not."""
    state: list[int] = []
    for name in (CATALOG_NAME, f"{CATALOG_NAME}.wal"):
        with contextlib.suppress(OSError):
            st = os.stat(root / name)
            state += [st.st_size, st.st_mtime_ns]
        state.append(-1)
    return tuple(state)


class _TokenCache:
    """Tokens found valid, by their hash, while the catalog is unchanged: a request costs no catalog connection
    for its token, and a revocation (a write) takes effect with the next request. Unknown tokens are not kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: tuple[int, ...] | None = None
        self._found: dict[str, TokenInfo] = {}

    def find(self, ws: Workspace, token: str) -> TokenInfo | None:
        root = ws.root
        key = f"{root}:{hash_token(token)}"
        state = catalog_state(root)
        with self._lock:
            if state != self._state:
                self._state, self._found = state, {}
            cached = self._found.get(key)
        if cached is not None:
            return cached
        info = find_token(ws.catalog, token)
        if info is not None:
            with self._lock:
                if self._state == state and len(self._found) < 10_000:
                    self._found[key] = info
        return info


_TOKENS = _TokenCache()


def require_role(minimum: str) -> Callable[..., Principal]:
    """A dependency that admits a token of role ``minimum`` or higher and gives its :class:`Principal`."""
    needed = role_rank(minimum)  # an unknown role name is a bug in the route, found at import

    def dependency(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        cookie: str | None = Depends(_cookie),
    ) -> Principal:
        principal = authenticate(request, bearer.credentials if bearer is not None else cookie)
        if role_rank(principal.role) < needed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this needs the {minimum} role; the token of {principal.name!r} has {principal.role}",
            )
        return principal

    dependency.__name__ = f"require_{minimum}"
    return dependency
