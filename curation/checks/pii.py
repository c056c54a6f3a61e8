"""PII and secrets in records: detection (the ``pii`` scan check) and redaction with typed placeholders.

What is found (:func:`find_pii`), each with a fixed score (higher = worse: how likely it is real, sensitive data):

| kind | rule | score |
|---|---|---|
| credit_card | 13-19 digits (spaces/dashes allowed), a card-network prefix, valid Luhn check digit | 1.0 |
| iban | country code, 2 check digits, 11-30 letters/digits, valid ISO 13616 mod-97 | 1.0 |
| aws_key, github_token, openai_key, slack_token | the providers' documented key prefixes and lengths | 1.0 |
| jwt | three base64url parts, the first two JSON objects (``eyJ``) | 1.0 |
| private_key | a PEM ``-----BEGIN ... PRIVATE KEY-----`` block | 1.0 |
| secret | a value of 12+ characters assigned to api_key / secret / token / password (mixed characters) | 0.9 |
| email | an address whose domain is not a documentation domain (example.com, ...) | 0.8 |
| phone | ``+`` and 8-15 digits in groups, or the (NNN) NNN-NNNN shape; not a date, order or id number | 0.6 |
| ipv4, ipv6 | a valid address that is globally routable (not private, loopback or documentation ranges) | 0.6 |
| high_entropy | 32+ hex or base64 characters of high entropy, no key name (often a hash): reported only | 0.4 |

Documentation values (example.com addresses, AWS's ``...EXAMPLE`` key, ``your_api_key_here`` placeholders,
private and documentation IP ranges, well-known public DNS resolvers)
score 0.2: reported in details, never flagged. Overlapping matches keep
the highest score (a JWT is not also a high-entropy string; card digits are not also a phone number).

A reason never prints a value in full: :meth:`PiiMatch.masked` keeps the last 4 digits of a card, the country
and last 4 of an IBAN, the first letter and the domain of an e-mail, the prefix of a key, the first group of an
address.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.checks.spec import CheckContext, CheckOutput, CheckSpec, Finding, ScanRecord

#: Typed placeholder of each kind in redacted text.
PLACEHOLDERS: dict[str, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "credit_card": "[CREDIT_CARD]",
    "iban": "[IBAN]",
    "ipv4": "[IP_ADDRESS]",
    "ipv6": "[IP_ADDRESS]",
    "aws_key": "[API_KEY]",
    "github_token": "[API_KEY]",
    "openai_key": "[API_KEY]",
    "slack_token": "[API_KEY]",
    "jwt": "[JWT]",
    "private_key": "[PRIVATE_KEY]",
    "secret": "[SECRET]",
    "high_entropy": "[SECRET]",
}
KINDS = tuple(PLACEHOLDERS)
DOCUMENTATION = 0.2  # the score of example values
#: Well-known public resolvers: an address of a service, not of a person (toolformer's `ping 8.8.8.8`).
PUBLIC_SERVICES = frozenset({"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "208.67.222.222", "208.67.220.220"})


@dataclass(frozen=True)
class PiiMatch:
    """One detected value: ``text[start:end] == value``."""

    kind: str
    start: int
    end: int
    value: str
    score: float
    label: str = ""  # the key name a keyed secret was assigned to

    @property
    def placeholder(self) -> str:
        return PLACEHOLDERS[self.kind]

    def masked(self) -> str:
        """The value with enough hidden that it cannot be recovered (see the module docstring)."""
        v = self.value
        digits = re.sub(r"\D", "", v)
        if self.kind == "credit_card":
            return f"****{digits[-4:]}"
        if self.kind == "iban":
            compact = v.replace(" ", "")
            return f"{compact[:2]}**…{compact[-4:]}"
        if self.kind == "phone":
            return f"***{digits[-2:]}"
        if self.kind == "email":
            local, _, domain = v.partition("@")
            return f"{local[:1]}***@{domain}"
        if self.kind == "ipv4":
            return f"{v.split('.')[0]}.*.*.*"
        if self.kind == "ipv6":
            return f"{v.split(':')[0]}:…"
        if self.kind == "private_key":
            return "-----BEGIN … PRIVATE KEY-----"
        if self.kind == "secret":
            return f"{self.label}=…({len(v)} chars)"
        prefix = re.match(r"(AKIA|ASIA|gh[pousr]_|github_pat_|sk-(?:proj-|svcacct-|admin-)?|xox[a-z]-|eyJ)", v)
        return f"{prefix.group(0) if prefix else v[:2]}…({len(v)} chars)"

    def describe(self, where: str) -> str:
        return f"{self.kind.replace('_', ' ')} {self.masked()} in {where}"


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn check (the last digit is the check digit)."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """True when ``iban`` (spaces allowed) has the ISO 13616 shape and its mod-97 remainder is 1."""
    compact = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``'s character distribution (0.0 for an empty string)."""
    if not text:
        return 0.0
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


_CARD_RE = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d.-]|-\d)")
_CARD_PREFIX_RE = re.compile(r"^(4|5[1-5]|2[2-7]|3[47]|3[0689]|6(011|5|4[4-9])|35)")
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b")
_DOC_DOMAINS_RE = re.compile(r"(^|\.)(example\.(com|org|net)|[a-z0-9-]+\.(example|test|invalid|localhost))$", re.I)
_PHONE_RE = re.compile(
    r"(?<![\w+/.-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{1,4}){1,4}"
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}[ .-]\d{3}[ .-]\d{4})(?![\w/-]|\.\d)"
)
_ID_CONTEXT_RE = re.compile(r"\b(order|invoice|ticket|account|id|no|number|isbn|ref|reference|#)\W{0,3}$", re.I)
_IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]|\.\d)"
)
_VERSION_CONTEXT_RE = re.compile(r"\b(version|ver\.?|v|release|build)\s*$", re.I)
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){1,7}:?(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?(?![\w:])"
)
_TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")),
    ("openai_key", re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}(?![\w-])")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)
_PRIVATE_KEY_RE = re.compile(
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----(?:[\s\S]{0,20000}?-----END (?:[A-Z]+ )*PRIVATE KEY-----)?"
)
_KEYED_SECRET_RE = re.compile(
    r"(?i)\b(?P<name>api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|access[_-]?token|auth[_-]?token|"
    r"bearer|password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9/+_=.!@#$%^&*~-]{12,200})"
)
_PLACEHOLDER_RE = re.compile(r"(?i)your|example|xxxx|\*\*\*|placeholder|here|dummy|changeme|redacted|<|\.\.\.")
_HIGH_ENTROPY_RE = re.compile(r"(?<![\w/+=-])(?:[0-9a-fA-F]{32,}|[A-Za-z0-9+/_-]{32,}={0,2})(?![\w/+=-])")


def _mixed(value: str) -> bool:
    """Letters and digits both present (a key, not a word or a number)."""
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


_DIGIT_RE = re.compile(r"\d")
#: A run of 32 characters a high-entropy token is made of: every _HIGH_ENTROPY_RE match holds one.
_LONG_RUN_RE = re.compile(r"[A-Za-z0-9+/_-]{32}")
#: What each token pattern's match must contain (its literal prefix): a text without it is not searched.
_TOKEN_NEEDS: dict[str, tuple[str, ...]] = {
    "aws_key": ("AKIA", "ASIA"),
    "github_token": ("gh",),
    "openai_key": ("sk-",),
    "slack_token": ("xox",),
    "jwt": ("eyJ",),
}


def _candidates(text: str) -> Iterable[PiiMatch]:
    """Every detector's matches. Each detector runs only on texts holding what all its matches hold (a digit, an
    ``@``, a ``:``, its literal prefix...): the same matches as running all of them, at half the cost on real text."""
    digits = _DIGIT_RE.search(text) is not None  # card, IBAN, phone and IPv4 numbers all hold a digit
    if digits:  # the detectors run in the order of their ties in find_pii, the same with or without the gates
        yield from _card_candidates(text)
    for kind, pattern in _TOKEN_PATTERNS:
        if not any(needed in text for needed in _TOKEN_NEEDS[kind]):
            continue
        for m in pattern.finditer(text):
            value = m.group(0)
            example = "EXAMPLE" in value.upper() or shannon_entropy(value) < 3.0 or not _mixed(value)
            yield PiiMatch(kind, m.start(), m.end(), value, DOCUMENTATION if example else 1.0)
    if "-----BEGIN" in text:
        for m in _PRIVATE_KEY_RE.finditer(text):
            yield PiiMatch("private_key", m.start(), m.end(), m.group(0), 1.0)
    if ":" in text or "=" in text:  # a keyed secret's name is followed by one
        for m in _KEYED_SECRET_RE.finditer(text):
            value = m.group("value")
            placeholder = _PLACEHOLDER_RE.search(value) or not _mixed(value) or shannon_entropy(value) < 3.0
            score = DOCUMENTATION if placeholder else 0.9
            yield PiiMatch("secret", m.start("value"), m.end("value"), value, score, m.group("name"))
    if "@" in text:
        for m in _EMAIL_RE.finditer(text):
            domain = m.group(0).rpartition("@")[2]
            yield PiiMatch(
                "email", m.start(), m.end(), m.group(0), DOCUMENTATION if _DOC_DOMAINS_RE.search(domain) else 0.8
            )
    if digits:
        yield from _phone_candidates(text)
    if ":" in text:
        yield from _ipv6_candidates(text)
    if _LONG_RUN_RE.search(text) is not None:
        yield from _high_entropy_candidates(text)


def _card_candidates(text: str) -> Iterable[PiiMatch]:
    """Card numbers and IBANs."""
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _CARD_PREFIX_RE.match(digits) and luhn_valid(digits) and len(set(digits)) > 1:
            yield PiiMatch("credit_card", m.start(), m.end(), m.group(0), 1.0)
    for m in _IBAN_RE.finditer(text):
        if iban_valid(m.group(0)):
            yield PiiMatch("iban", m.start(), m.end(), m.group(0), 1.0)


def _phone_candidates(text: str) -> Iterable[PiiMatch]:
    """Phone numbers and IPv4 addresses."""
    for m in _PHONE_RE.finditer(text):
        value = m.group(0)
        digits = re.sub(r"\D", "", value)
        if not 8 <= len(digits) <= 15 or _ID_CONTEXT_RE.search(text[max(0, m.start() - 12) : m.start()]):
            continue
        if not value.startswith(("+", "(")) and len(digits) != 10:
            continue
        if re.fullmatch(r"(19|20)\d\d[ .-]\d\d?[ .-]\d\d?", value):  # a date
            continue
        yield PiiMatch("phone", m.start(), m.end(), value, 0.6)
    for m in _IPV4_RE.finditer(text):
        if _VERSION_CONTEXT_RE.search(text[max(0, m.start() - 10) : m.start()]):
            continue
        address = ipaddress.IPv4Address(m.group(0))
        personal = address.is_global and m.group(0) not in PUBLIC_SERVICES
        yield PiiMatch("ipv4", m.start(), m.end(), m.group(0), 0.6 if personal else DOCUMENTATION)


def _ipv6_candidates(text: str) -> Iterable[PiiMatch]:
    for m in _IPV6_RE.finditer(text):
        value = m.group(0)
        if value.count(":") < 2:
            continue
        try:
            address6 = ipaddress.IPv6Address(value)
        except ValueError:
            continue
        yield PiiMatch("ipv6", m.start(), m.end(), value, 0.6 if address6.is_global else DOCUMENTATION)


def _high_entropy_candidates(text: str) -> Iterable[PiiMatch]:
    for m in _HIGH_ENTROPY_RE.finditer(text):
        value = m.group(0)
        is_hex = all(c in "0123456789abcdefABCDEF" for c in value)
        token_start = max(text.rfind(" ", 0, m.start()), text.rfind("\n", 0, m.start()), text.rfind("'", 0, m.start()))
        if "://" in text[token_start + 1 : m.start()]:
            continue  # a path or id inside a URL
        cased = is_hex or (any(c.isupper() for c in value) and any(c.islower() for c in value))
        if _mixed(value) and cased and shannon_entropy(value) >= (3.0 if is_hex else 4.0):
            yield PiiMatch("high_entropy", m.start(), m.end(), value, 0.4)


def find_pii(text: str, kinds: Sequence[str] | None = None) -> list[PiiMatch]:
    """Every PII / secret match in ``text``, non-overlapping, in text order.

    Where matches overlap, the higher score wins, then the longer match, then the earlier one. ``kinds``
    restricts the detectors (default: all of :data:`KINDS`).
    """
    wanted = set(KINDS if kinds is None else kinds)
    found = sorted(
        (m for m in _candidates(text) if m.kind in wanted), key=lambda m: (-m.score, -(m.end - m.start), m.start)
    )
    taken: list[PiiMatch] = []
    for m in found:
        if all(m.end <= t.start or m.start >= t.end for t in taken):
            taken.append(m)
    return sorted(taken, key=lambda m: m.start)


def redact(text: str, threshold: float = 0.5, kinds: Sequence[str] | None = None) -> tuple[str, list[PiiMatch]]:
    """``text`` with every match scoring at least ``threshold`` replaced by its typed placeholder
    (:data:`PLACEHOLDERS`), and the matches replaced. Text without such a match is returned unchanged."""
    matches = [m for m in find_pii(text, kinds) if m.score >= threshold]
    out: list[str] = []
    pos = 0
    for m in matches:
        out.append(text[pos : m.start])
        out.append(m.placeholder)
        pos = m.end
    out.append(text[pos:])
    return "".join(out), matches


class PiiConfig(BaseModel):
    """Configuration of ``pii`` (and of redaction, which replaces the same matches)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.5, gt=0.0, le=1.0, description="Flag (and redact) matches scoring at least this.")
    kinds: list[str] | None = Field(None, description=f"Detectors to run (default all: {', '.join(KINDS)}).")

    @field_validator("kinds")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or []) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown PII kind(s) {', '.join(unknown)} (known: {', '.join(KINDS)})")
        return value


def check_pii(records: Sequence[ScanRecord], ctx: CheckContext | None = None) -> CheckOutput:
    """``pii``: personal data or secrets in the prompt or the response. Score = the highest score of a match
    (module docstring table; 0.0 when none), flagged when it reaches ``threshold``.

    Default threshold 0.5: flags validated numbers (cards, IBANs), provider keys, tokens, keyed secrets,
    e-mail addresses, phone numbers and public IP addresses; reports (score 0.4 / 0.2, unflagged) unnamed
    high-entropy strings, which are mostly hashes and ids, and documentation values. Measured (docs/CHECKS.md):
    self_instruct 4 of 427 flagged (9 e-mail addresses and 3 phone numbers written in the text, all real
    matches), banking77, sharegpt, oasst and toolformer none (toolformer's `ping 8.8.8.8` and oasst's private
    IPs and SHA-1 hashes are reported unflagged); no date, version or order number matched.
    The reason names each kind and a masked value, never the value itself.
    """
    config = ctx.config if ctx is not None and isinstance(ctx.config, PiiConfig) else PiiConfig()
    findings = []
    kinds: Counter[str] = Counter()
    for rec in records:
        described: list[str] = []
        details: list[dict[str, object]] = []
        score = 0.0
        for where, text in (("prompt", rec.prompt), ("response", rec.response)):
            for m in find_pii(text, config.kinds):
                score = max(score, m.score)
                details.append({"kind": m.kind, "field": where, "masked": m.masked(), "score": m.score})
                if m.score >= config.threshold:
                    described.append(m.describe(where))
                    kinds[m.kind] += 1
        flagged = score >= config.threshold
        reason = None
        if flagged:
            reason = "; ".join(described[:3]) + (f" (+{len(described) - 3} more)" if len(described) > 3 else "")
        findings.append(Finding(rec.record_id, score, flagged, reason, {"matches": details} if details else None))
    return CheckOutput(findings, summary={"threshold": config.threshold, "kinds": dict(sorted(kinds.items()))})


SPEC = CheckSpec(
    "pii",
    check_pii,
    higher_score="a more likely real piece of personal data or a secret (the best match's fixed score)",
    config=PiiConfig,
    shard_summary={"threshold": "same", "kinds": "sum"},
    default=True,
    blocks_snapshot=True,
)
