"""Named prompt templates that turn a raw input (a customer message, a text to classify) into an instruction.

A template is a ``str.format`` string whose placeholders name input fields; ``{text}`` is the user content of
the row (the user-mapped column(s) of a table, the first user message of a conversation). Only plain names
are allowed as placeholders, so a template can never reach attributes or indexes of the values.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.records import normalize_content

#: Built-in templates. ``intent`` deliberately lists no labels: the label set is what fine-tuning teaches.
TEMPLATES: dict[str, str] = {
    "plain": "{text}",
    "intent": (
        "Identify the intent of the following customer message. Answer with the intent label only.\n\n"
        "Customer message: {text}"
    ),
    "classify": "Classify the following text. Answer with the label only.\n\nText: {text}",
}


class TemplateError(ValueError):
    """A template name is unknown or a format string is unusable."""


class TemplateFieldMissing(KeyError):
    """A row lacks a field that the template names."""


@dataclass(frozen=True)
class Template:
    name: str  # the built-in name, or "custom"
    text: str
    fields: tuple[str, ...]  # placeholder names, in order of first use

    def render(self, text: str, row: Mapping[str, Any]) -> str:
        """The template filled in; values are normalised first, so stray whitespace cannot split records."""
        values: dict[str, str] = {}
        for name in self.fields:
            if name == "text":
                values[name] = normalize_content(text)
                continue
            if name not in row:
                raise TemplateFieldMissing(name)
            value = row[name]
            values[name] = "" if value is None else normalize_content(str(value))
        return self.text.format_map(values)


def _placeholders(text: str) -> tuple[str, ...]:
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"template {text!r} is not a valid format string: {exc}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TemplateError(
                f"template placeholder {{{name}}} must be a plain field name like {{text}} or {{question}}"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def resolve_template(spec: str) -> Template:
    """A built-in template by name, or a custom format string (recognised by its ``{`` placeholders)."""
    if spec in TEMPLATES:
        return Template(spec, TEMPLATES[spec], _placeholders(TEMPLATES[spec]))
    if "{" not in spec:
        raise TemplateError(f"unknown template {spec!r} (built-in: {', '.join(TEMPLATES)}; or a {{field}} string)")
    fields = _placeholders(spec)
    if not fields:
        raise TemplateError(f"template {spec!r} has no {{field}} placeholder, so every row would be identical")
    return Template("custom", spec, fields)
