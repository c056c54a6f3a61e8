"""API tokens of `refinery serve`: made and revoked with the CLI on the server machine, shown once, stored hashed.

A token is ``rfy_`` + 32 random bytes (URL-safe base64). The catalog table ``api_tokens`` keeps its SHA-256, the
holder's name and role, who made it and when, and when it was revoked; never the token. A token is found by the
hash of what a request presents, so checking one is a single indexed lookup and no comparison of secrets happens
in Python. The first admin token can only be made with `refinery token create` (there is no HTTP bootstrap).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.catalog import Catalog, utcnow
from schemas.errors import InputError

#: The roles, lowest first: each role may do everything the roles before it may.
ROLES = ("viewer", "engineer", "admin")
TOKEN_PREFIX = "rfy_"
_COLUMNS = "token_id, name, role, created_at, created_by, revoked_at"


class TokenError(InputError):
    """A token command that cannot be done: an unknown role or token id, an empty name (exit 2)."""


@dataclass(frozen=True)
class TokenInfo:
    """What the catalog knows of a token (everything but the token itself)."""

    token_id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


def hash_token(token: str) -> str:
    """The lowercase hex SHA-256 of a token's text: what the catalog stores and looks up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def role_rank(role: str) -> int:
    """0 for viewer, 1 for engineer, 2 for admin; a :class:`TokenError` for anything else."""
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    return ROLES.index(role)


def create_token(catalog: Catalog, name: str, role: str, created_by: str) -> tuple[TokenInfo, str]:
    """A new token for ``name`` with ``role``: its catalog row and the token text, which exists nowhere else
    (show it once)."""
    role_rank(role)
    name = name.strip()
    if not name:
        raise TokenError("a token needs a --name: who or what holds it (it is recorded with every write it makes)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    info = TokenInfo("tok_" + secrets.token_hex(6), name, role, utcnow(), created_by, None)
    with catalog.write() as con:
        con.execute(
            "INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
            [info.token_id, info.name, info.role, hash_token(token), info.created_at, info.created_by],
        )
    return info, token


def list_tokens(catalog: Catalog, include_revoked: bool = True) -> list[TokenInfo]:
    """Every token, oldest first (without revoked ones when ``include_revoked`` is False)."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with catalog.read() as con:
        rows = con.execute(f"SELECT {_COLUMNS} FROM api_tokens{where} ORDER BY created_at, token_id").fetchall()
    return [TokenInfo(*row) for row in rows]


def revoke_token(catalog: Catalog, token_id: str) -> TokenInfo:
    """Revoke a token from now on (revoking it again changes nothing); its row, with ``revoked_at`` set."""
    with catalog.write() as con:
        found = con.execute(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_id = ?", [token_id]).fetchone()
        if found is None:
            raise TokenError(f"no token {token_id!r}: see `refinery token list`")
        if found[-1] is None:
            con.execute("UPDATE api_tokens SET revoked_at = ? WHERE token_id = ?", [utcnow(), token_id])
        row = con.execute(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_id = ?", [token_id]).fetchone()
    assert row is not None
    return TokenInfo(*row)


def find_token(catalog: Catalog, token: str) -> TokenInfo | None:
    """The valid (not revoked) token whose text is ``token``, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    with catalog.read() as con:
        row = con.execute(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE token_sha256 = ? AND revoked_at IS NULL", [hash_token(token)]
        ).fetchone()
    return None if row is None else TokenInfo(*row)
