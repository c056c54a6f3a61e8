"""Token management over HTTP, for admins: list, make and revoke API tokens (the same functions as
`refinery token ...`). The first admin token can only be made with the CLI on the server machine."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from refinery.service.auth import Principal, require_role
from refinery.service.models import ErrorOut, UtcDateTime
from refinery.service.tokens import TokenError, create_token, list_tokens, revoke_token

router = APIRouter(tags=["tokens"])
admin = require_role("admin")


class TokenRow(BaseModel):
    token_id: str
    name: str
    role: Literal["viewer", "engineer", "admin"]
    created_at: UtcDateTime
    created_by: str
    revoked_at: UtcDateTime | None


class TokensOut(BaseModel):
    tokens: list[TokenRow]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"\S", description="Who or what holds it.")
    role: Literal["viewer", "engineer", "admin"]


class TokenCreatedOut(TokenRow):
    token: str = Field(description="The token itself: shown this once, stored only as its SHA-256.")


@router.get("/tokens", response_model=TokensOut)
def tokens(request: Request, principal: Principal = Depends(admin)) -> TokensOut:
    """Every token (never the token itself), oldest first."""
    return TokensOut(tokens=[TokenRow(**t.to_json()) for t in list_tokens(request.app.state.workspace.catalog)])


@router.post("/tokens", response_model=TokenCreatedOut, status_code=status.HTTP_201_CREATED)
def make_token(body: TokenIn, request: Request, principal: Principal = Depends(admin)) -> TokenCreatedOut:
    """A new token, shown once; recorded as made by this admin token's name."""
    info, token = create_token(request.app.state.workspace.catalog, body.name, body.role, created_by=principal.name)
    return TokenCreatedOut(**info.to_json(), token=token)


@router.delete(
    "/tokens/{token_id}",
    response_model=TokenRow,
    responses={404: {"model": ErrorOut, "description": "No token with that id."}},
)
def revoke(
    request: Request,
    token_id: str = Path(pattern=r"^tok_[0-9a-f]{12}$"),
    principal: Principal = Depends(admin),
) -> TokenRow:
    """Revoke a token: requests with it get 401 from now on (revoking twice changes nothing)."""
    try:
        info = revoke_token(request.app.state.workspace.catalog, token_id)
    except TokenError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=" ".join(str(exc).split())) from exc
    return TokenRow(**info.to_json())
