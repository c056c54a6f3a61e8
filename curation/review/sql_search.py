"""A search engine for argilla-server that answers from argilla-server's own SQL database (no Elasticsearch).

This module runs inside the Argilla server process (the server's own venv), never in Refinery's: it imports
``argilla_server`` and nothing of Refinery's. ``launcher.py`` imports it before ``argilla_server._app`` so that the
class below is in argilla-server's ``SearchEngine`` registry when the app asks for ``ARGILLA_SEARCH_ENGINE``.

Index calls are no-ops: records, responses, suggestions and vectors are already rows of the server's database.
Searches load the rows of one dataset and filter, sort and score them in Python, which is ample for review
rounds (thousands of records); a team with millions of records per dataset should run Argilla with
Elasticsearch instead.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from argilla_server.database import AsyncSessionLocal
from argilla_server.enums import MetadataPropertyType, SimilarityOrder, SortOrder
from argilla_server.models import Dataset, MetadataProperty, Question, Record, Response, Suggestion, Vector
from argilla_server.models import User as ServerUser
from argilla_server.models import VectorSettings as ServerVectorSettings
from argilla_server.search_engine.base import (
    AndFilter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    MetadataMetrics,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)
from sqlalchemy import func, select

ENGINE_NAME = "refinery-sql"
_TOKEN = re.compile(r"\w+", re.UNICODE)


@dataclass
class _Row:
    """One record of a dataset with what filters and sorts may look at."""

    id: UUID
    external_id: str | None
    status: str
    fields: dict[str, Any]
    metadata: dict[str, Any]
    inserted_at: datetime
    updated_at: datetime
    responses: list[dict[str, Any]] = field(default_factory=list)  # {user_id, status, values}
    suggestions: dict[str, dict[str, Any]] = field(default_factory=dict)  # question name -> suggestion

    def record_property(self, name: str) -> Any:
        return {
            "id": str(self.id),
            "external_id": self.external_id,
            "status": self.status,
            "inserted_at": self.inserted_at,
            "updated_at": self.updated_at,
        }.get(name)


def _field_text(value: Any) -> str:
    """Searchable text of a field value (text, or a chat field's message contents)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_field_text(v.get("content", "") if isinstance(v, dict) else v) for v in value)
    if isinstance(value, dict):
        return " ".join(_field_text(v) for v in value.values())
    return "" if value is None else str(value)


def _text_score(row: _Row, query: TextQuery | str) -> float:
    """0 when a query term is missing from the searched field(s), else the number of term occurrences."""
    text_query = TextQuery(q=query) if isinstance(query, str) else query
    terms = [t.lower() for t in _TOKEN.findall(text_query.q)]
    if not terms:
        return 1.0
    values = [row.fields.get(text_query.field)] if text_query.field else list(row.fields.values())
    tokens = Counter(t.lower() for value in values for t in _TOKEN.findall(_field_text(value)))
    if any(tokens[t] == 0 for t in terms):
        return 0.0
    return float(sum(tokens[t] for t in terms))


def _matches_values(value: Any, flt: TermsFilter | RangeFilter) -> bool:
    if value is None:
        return False
    if isinstance(flt, TermsFilter):
        wanted = {str(v) for v in flt.values}
        if isinstance(value, list):
            return any(str(v) in wanted for v in value)
        return str(value) in wanted
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return (flt.ge is None or number >= flt.ge) and (flt.le is None or number <= flt.le)


def _user_responses(row: _Row, user: ServerUser | None) -> list[dict[str, Any]]:
    if user is None:
        return row.responses
    return [r for r in row.responses if r["user_id"] == user.id]


def _response_value(response: dict[str, Any], question: str) -> Any:
    value = (response.get("values") or {}).get(question)
    return value.get("value") if isinstance(value, dict) else None


def _matches(row: _Row, flt: Any) -> bool:
    """Whether ``row`` passes an argilla-server search filter (and / terms / range over any scope)."""
    if isinstance(flt, AndFilter):
        return all(_matches(row, f) for f in flt.filters)
    scope = flt.scope
    if isinstance(scope, MetadataFilterScope):
        return _matches_values(row.metadata.get(scope.metadata_property), flt)
    if isinstance(scope, RecordFilterScope):
        return _matches_values(row.record_property(scope.property), flt)
    if isinstance(scope, SuggestionFilterScope):
        suggestion = row.suggestions.get(scope.question)
        return suggestion is not None and _matches_values(suggestion.get(scope.property), flt)
    if isinstance(scope, ResponseFilterScope):
        responses = _user_responses(row, scope.user)
        if scope.question:
            return any(_matches_values(_response_value(r, scope.question), flt) for r in responses)
        if scope.property == "status" and isinstance(flt, TermsFilter):
            statuses = {str(v) for v in flt.values}
            # 'pending' for a user: no response of theirs yet (for everyone: no response at all)
            if "pending" in statuses and not responses:
                return True
            return any(str(r["status"]) in statuses for r in responses)
        raise ValueError(f"cannot filter on response scope {scope}")
    raise ValueError(f"cannot filter on scope {scope}")


def _sort_value(row: _Row, order: Order) -> Any:
    scope = order.scope
    if isinstance(scope, MetadataFilterScope):
        return row.metadata.get(scope.metadata_property)
    if isinstance(scope, RecordFilterScope):
        return row.record_property(scope.property)
    if isinstance(scope, SuggestionFilterScope):
        suggestion = row.suggestions.get(scope.question)
        return None if suggestion is None else suggestion.get(scope.property)
    if isinstance(scope, ResponseFilterScope):
        responses = _user_responses(row, scope.user)
        if scope.question:
            numbers = [v for r in responses if isinstance(v := _response_value(r, scope.question), int | float)]
            return sum(numbers) / len(numbers) if numbers else None
        values = [str(r.get(scope.property or "")) for r in responses]
        return min(values) if values else None
    return None


def _sorted(rows: list[_Row], sort: list[Order]) -> list[_Row]:
    """Stable multi-key sort; rows without a value go last whatever the direction (as in Elasticsearch)."""
    for order in reversed(sort):
        present = [r for r in rows if _sort_value(r, order) is not None]
        missing = [r for r in rows if _sort_value(r, order) is None]
        present.sort(key=functools.partial(_sort_key, order=order), reverse=order.order == SortOrder.desc)
        rows = present + missing
    return rows


def _sort_key(row: _Row, order: Order) -> Any:
    return _comparable(_sort_value(row, order))


def _comparable(value: Any) -> Any:
    if isinstance(value, bool | int | float | datetime):
        return (0, value)
    if isinstance(value, list):
        return (1, ",".join(map(str, value)))
    return (1, str(value))


def _user_order(user_id: Any, record_id: UUID) -> str:
    """A per-annotator order that differs between annotators but is stable for one (like ES random_score)."""
    return hashlib.sha256(f"{user_id}:{record_id}".encode()).hexdigest()


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


@SearchEngine.register(engine_name=ENGINE_NAME)
class SQLSearchEngine(SearchEngine):
    """argilla-server's search interface answered from its SQL database."""

    @classmethod
    async def new_instance(cls) -> SQLSearchEngine:
        return cls()

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        async with AsyncSessionLocal() as db:
            await db.execute(select(1))
        return True

    async def info(self) -> dict[str, Any]:
        return {"engine": ENGINE_NAME, "backend": "argilla-server SQL database"}

    # Index maintenance: nothing to do, the rows are the index.
    async def create_index(self, dataset: Dataset) -> None:
        return None

    async def delete_index(self, dataset: Dataset) -> None:
        return None

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty) -> None:
        return None

    async def configure_index_vectors(self, vector_settings: ServerVectorSettings) -> None:
        return None

    async def index_records(self, dataset: Dataset, records: Any) -> None:
        return None

    async def partial_record_update(self, record: Record, **update: Any) -> None:
        return None

    async def delete_records(self, dataset: Dataset, records: Any) -> None:
        return None

    async def update_record_response(self, response: Response) -> None:
        return None

    async def delete_record_response(self, response: Response) -> None:
        return None

    async def update_record_suggestion(self, suggestion: Suggestion) -> None:
        return None

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        return None

    # Questions answered from SQL.
    async def get_dataset_progress(self, dataset: Dataset) -> dict[str, Any]:
        if dataset.is_draft:
            return {}
        async with AsyncSessionLocal() as db:
            rows = (
                await db.execute(
                    select(Record.status, func.count()).where(Record.dataset_id == dataset.id).group_by(Record.status)
                )
            ).all()
        counts = {str(status): int(n) for status, n in rows}
        return {"total": sum(counts.values()), **counts}

    async def get_dataset_user_progress(self, dataset: Dataset, user: ServerUser) -> dict[str, Any]:
        if dataset.is_draft:
            return {}
        async with AsyncSessionLocal() as db:
            rows = (
                await db.execute(
                    select(Response.status, func.count())
                    .join(Record, Record.id == Response.record_id)
                    .where(Record.dataset_id == dataset.id, Response.user_id == user.id)
                    .group_by(Response.status)
                )
            ).all()
        counts = {str(status): int(n) for status, n in rows}
        return {"total": sum(counts.values()), **counts}

    async def _rows(self, dataset_id: UUID) -> list[_Row]:
        async with AsyncSessionLocal() as db:
            records = (
                await db.execute(
                    select(
                        Record.id,
                        Record.external_id,
                        Record.status,
                        Record.fields,
                        Record.metadata_,
                        Record.inserted_at,
                        Record.updated_at,
                    ).where(Record.dataset_id == dataset_id)
                )
            ).all()
            rows = {
                rid: _Row(rid, ext, str(status), fields or {}, meta or {}, ins, upd)
                for rid, ext, status, fields, meta, ins, upd in records
            }
            responses = (
                await db.execute(
                    select(Response.record_id, Response.user_id, Response.status, Response.values)
                    .join(Record, Record.id == Response.record_id)
                    .where(Record.dataset_id == dataset_id)
                )
            ).all()
            for rid, user_id, status, values in responses:
                rows[rid].responses.append({"user_id": user_id, "status": str(status), "values": values or {}})
            suggestions = (
                await db.execute(
                    select(
                        Suggestion.record_id,
                        Question.name,
                        Suggestion.value,
                        Suggestion.score,
                        Suggestion.agent,
                        Suggestion.type,
                    )
                    .join(Question, Question.id == Suggestion.question_id)
                    .join(Record, Record.id == Suggestion.record_id)
                    .where(Record.dataset_id == dataset_id)
                )
            ).all()
            for rid, question, value, score, agent, kind in suggestions:
                rows[rid].suggestions[question] = {
                    "value": value,
                    "score": score,
                    "agent": agent,
                    "type": None if kind is None else str(kind),
                }
        return sorted(rows.values(), key=lambda r: (r.inserted_at, str(r.id)))

    async def search(
        self,
        dataset: Dataset,
        query: TextQuery | str | None = None,
        filter: Any = None,
        sort: list[Order] | None = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Any = None,
    ) -> SearchResponses:
        rows = [r for r in await self._rows(dataset.id) if filter is None or _matches(r, filter)]
        scores = {r.id: (_text_score(r, query) if query is not None else 1.0) for r in rows}
        rows = [r for r in rows if scores[r.id] > 0]
        if sort:
            rows = _sorted(rows, sort)
        elif user_id is not None:
            rows.sort(key=lambda r: (-scores[r.id], _user_order(user_id, r.id)))
        elif query is not None:
            rows.sort(key=lambda r: -scores[r.id])
        items = [SearchResponseItem(record_id=r.id, score=scores[r.id]) for r in rows[offset : offset + limit]]
        return SearchResponses(items=items, total=len(rows))

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: ServerVectorSettings,
        value: list[float] | None = None,
        record: Record | None = None,
        query: TextQuery | str | None = None,
        filter: Any = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: float | None = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        target = value if value else record.vector_value_by_vector_settings(vector_settings)  # type: ignore[union-attr]
        if not target:
            raise ValueError("Cannot find a vector value to apply with provided info")
        excluded = record.id if record is not None else None
        async with AsyncSessionLocal() as db:
            vectors = (
                await db.execute(
                    select(Vector.record_id, Vector.value).where(Vector.vector_settings_id == vector_settings.id)
                )
            ).all()
        allowed: set[UUID] | None = None
        if filter is not None or query is not None:
            rows = await self._rows(dataset.id)
            allowed = {
                r.id
                for r in rows
                if (filter is None or _matches(r, filter)) and (query is None or _text_score(r, query) > 0)
            }
        scored = [
            (rid, _cosine(target, vec))
            for rid, vec in vectors
            if rid != excluded and (allowed is None or rid in allowed) and vec
        ]
        scored.sort(key=lambda item: item[1], reverse=order == SimilarityOrder.most_similar)
        if threshold is not None:
            scored = [s for s in scored if s[1] >= threshold]
        scored = scored[:max_results]
        return SearchResponses(items=[SearchResponseItem(record_id=r, score=s) for r, s in scored], total=len(scored))

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        async with AsyncSessionLocal() as db:
            values = [
                (meta or {}).get(metadata_property.name)
                for (meta,) in (
                    await db.execute(select(Record.metadata_).where(Record.dataset_id == metadata_property.dataset_id))
                ).all()
            ]
        present = [v for v in values if v is not None]
        if metadata_property.type == MetadataPropertyType.terms:
            counts: Counter[str] = Counter()
            for v in present:
                counts.update(str(x) for x in (v if isinstance(v, list) else [v]))
            terms = [TermsMetrics.TermCount(term=t, count=n) for t, n in counts.most_common()]
            return TermsMetrics(total=len(counts), values=terms)
        numbers = [v for v in present if isinstance(v, int | float)]
        if metadata_property.type == MetadataPropertyType.integer:
            ints = [int(v) for v in numbers]
            return IntegerMetadataMetrics(min=min(ints, default=None), max=max(ints, default=None))
        return FloatMetadataMetrics(min=min(numbers, default=None), max=max(numbers, default=None))
