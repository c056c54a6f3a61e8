"""Every endpoint of the running server, fuzzed by schemathesis from the server's OpenAPI document: no 5xx, and
every status code, content type, header and body matches the schema (schemathesis' default checks, the auth checks
included: a request without its token must be refused).

The server runs over the chain workspace (tests/service/chain_support.py), so lists are not empty and their rows
are checked too. Requests carry a viewer token: reads are answered, and every write (POST /jobs, /uploads,
/tokens, DELETE /jobs/{id}, /tokens/{id}) must be refused with 403 whatever the body, so fuzzing enqueues nothing.
A second pass fuzzes the admin's token endpoints with an admin token. Small example counts keep it near a minute.

The test cases are made at collection, before any server runs, from the document of ``create_app`` (the code the
server runs); ``test_the_running_server_serves_that_schema`` checks that the running server's /openapi.json is
that document. (schemathesis' lazy ``from_fixture`` loader does not work with pytest 9.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.require import in_ci
from tests.support.service import Service

try:
    import schemathesis
    from hypothesis import HealthCheck, settings
    from schemathesis.config import SchemathesisConfig

    from refinery.service.app import create_app
except ImportError as exc:  # under CI the dev extra must be there: fail, not skip
    if in_ci():
        raise
    pytest.skip(f"{exc}: pip install -e '.[service,dev]'", allow_module_level=True)

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 6
#: POST /sql answers SQL that DuckDB refuses with 400: a schema cannot say which strings are valid SQL.
POSITIVE_STATUSES = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]


def _config() -> Any:
    return SchemathesisConfig.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}}}
    )


#: The OpenAPI document of the app (no workspace is opened to make it).
DOCUMENT = create_app(Path("/nonexistent-workspace"), run_jobs=False).openapi()


@pytest.fixture(scope="module")
def viewer_headers(chain_service: Service) -> dict[str, str]:
    return chain_service.headers("viewer")


@pytest.fixture(scope="module")
def admin_headers(chain_service: Service) -> dict[str, str]:
    return chain_service.headers("admin")


schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config())
tokens_only = schema.include(path_regex="^/tokens")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_with_a_viewer_token(case: Any, chain_service: Service, viewer_headers: dict[str, str]) -> None:
    response = case.call_and_validate(base_url=chain_service.base_url, headers=viewer_headers)
    writes = case.method.upper() in ("POST", "DELETE") and not case.path.startswith("/sql")
    if writes:
        refused = (400, 401, 403, 405, 422)
        assert response.status_code in refused, (case.method, case.path, response.status_code, response.text)


@tokens_only.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_token_endpoints_with_an_admin_token(
    case: Any, chain_service: Service, admin_headers: dict[str, str]
) -> None:
    case.call_and_validate(base_url=chain_service.base_url, headers=admin_headers)


def test_the_running_server_serves_that_schema(chain_service: Service) -> None:
    served = httpx.get(f"{chain_service.base_url}/openapi.json", timeout=30).json()
    assert served == DOCUMENT


def test_the_schema_lists_every_route() -> None:
    paths = set(DOCUMENT["paths"])
    expected = {"/healthz", "/snapshots", "/snapshots/{snapshot_id}", "/scans", "/scans/{scan_id}",
                "/scans/{scan_id}/report", "/adapters", "/adapters/{adapter_id}", "/evals", "/evals/{eval_id}",
                "/registry", "/lineage/{identifier}", "/sql", "/tokens", "/tokens/{token_id}", "/jobs",
                "/jobs/{job_id}"}  # fmt: skip
    assert expected <= paths, expected - paths
