"""PII detection on planted values (validated numbers, keys, false-positive traps) and redaction round trip
through a real catalog: scan -> redacted version linked to its original, original untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curation.amend.redact import RedactionError, redact_scan
from curation.checks import run_scan
from curation.checks.pii import check_pii, find_pii, iban_valid, luhn_valid, redact
from curation.checks.spec import CheckContext, ScanRecord
from curation.ingest.options import IngestOptions
from curation.ingest.pipeline import ingest
from curation.similarity.exact import KeepRank
from schemas.catalog import Catalog

AWS = "AKIA2E0A8F3B244C9986"
GITHUB = "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


def rec(rid: str, prompt: str, response: str = "Done.") -> ScanRecord:
    return ScanRecord(rid, prompt, response, None, KeepRank(1, 0.0, ("t", 0, 0), rid))


def test_luhn_and_iban_validation() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("") and not luhn_valid("41x1")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE89 3704 0044 0532 0130 01") and not iban_valid("GB82WEST1234569876543X")
    assert not iban_valid("DE89")


PLANTED = {
    "card": ("Charge my card 4111 1111 1111 1111 please", "credit_card", "credit card ****1111 in prompt"),
    "iban": ("Send it to GB82 WEST 1234 5698 7654 32", "iban", "iban GB**…5432 in prompt"),
    "email": ("Write to jane.roe@gmail.com", "email", "email j***@gmail.com in prompt"),
    "phone": ("Call me on +44 20 7946 0958 tonight", "phone", "phone ***58 in prompt"),
    "phone_us": ("My number is (415) 555-2671.", "phone", "phone ***71 in prompt"),
    "ipv4": ("The server is at 81.2.69.160", "ipv4", "ipv4 81.*.*.* in prompt"),
    "ipv6": ("Connect to 2606:4700:4700::1111 now", "ipv6", "ipv6 2606:… in prompt"),
    "aws": (f"key {AWS}", "aws_key", "aws key AKIA…(20 chars) in prompt"),
    "github": (f"token {GITHUB}", "github_token", "github token ghp_…(40 chars) in prompt"),
    "openai": (
        "export OPENAI=sk-proj-abc123DEF456ghi789JKL012",
        "openai_key",
        "openai key sk-proj-…(32 chars) in prompt",
    ),
    "slack": (
        "xoxb-123456789012-abcdefABCDEF is the bot token",
        "slack_token",
        "slack token xoxb-…(30 chars) in prompt",
    ),
    "jwt": (f"Authorization: {JWT}", "jwt", "jwt eyJ…(92 chars) in prompt"),
    "secret": ('config: api_key = "a8F3kd93KdlQ0zPq"', "secret", "secret api_key=…(16 chars) in prompt"),
    "pem": ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "private_key", None),
}
TRAPS = {
    "bad_card": "Card 4111 1111 1111 1112 fails the Luhn check",
    "bad_iban": "IBAN DE89 3704 0044 0532 0130 01 has a wrong check",
    "date": "The meeting is on 2023-01-15 at 10:30:45",
    "version": "Upgrade to version 3.10.2 or v 1.2.3.4 first",
    "order": "Your order #1234567890 and order number 555-123-4567 shipped",
    "doc_email": "Write to test@example.com for details",
    "private_ip": "Open 192.168.1.1 or 127.0.0.1 in the browser, or ::1",
    "dns": "Run ping 8.8.8.8 to test the network",
    "aws_example": "AKIAIOSFODNN7EXAMPLE is the documented example key",
    "placeholder": "password: your_password_here",
    "hash": "The SHA-1 is e3a82186438a9a2ef80c2a3fdba0182fb9b2d5f1",
    "url": "See https://stackoverflow.com/questions/40462369/remove-item-from-stored-array-in-angular-2",
    "chinese": "我的名字是张伟，我住在北京。",
}


def test_pii_flags_exactly_the_planted_records_with_masked_reasons() -> None:
    records = [rec(k, v[0]) for k, v in PLANTED.items()] + [rec(k, v) for k, v in TRAPS.items()]
    out = check_pii(records, CheckContext())
    by_id = {f.record_id: f for f in out.findings}
    assert {f.record_id for f in out.findings if f.flagged} == set(PLANTED)
    for key, (_, kind, reason) in PLANTED.items():
        finding = by_id[key]
        assert finding.details is not None and finding.details["matches"][0]["kind"] == kind
        if reason is not None:
            assert finding.reason == reason
    for key, (text, _, _) in PLANTED.items():  # no reason leaks a value in full
        secret = find_pii(text)[0].value
        assert secret not in (by_id[key].reason or "")
    assert by_id["hash"].score == 0.4 and by_id["date"].score == 0.0 and by_id["doc_email"].score == 0.2


def test_redact_replaces_values_with_typed_placeholders() -> None:
    text = "Mail jane.roe@gmail.com, card 4111-1111-1111-1111, key " + AWS + ", docs at test@example.com"
    redacted, matches = redact(text)
    assert redacted == "Mail [EMAIL], card [CREDIT_CARD], key [API_KEY], docs at test@example.com"
    assert [m.kind for m in matches] == ["email", "credit_card", "aws_key"]
    assert redact("nothing here") == ("nothing here", [])


def test_huge_and_empty_texts() -> None:
    big = ("lorem ipsum 12345 " * 60_000) + " jane.roe@gmail.com"
    out = check_pii([rec("big", big), rec("empty", "", "")], CheckContext())
    assert [(f.record_id, f.flagged) for f in out.findings] == [("big", True), ("empty", False)]


def _chat(user: str, assistant: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def test_redaction_round_trip(tmp_path: Path, catalog: Catalog) -> None:
    lines = [_chat(f"plain question {i}", f"plain answer {i}") for i in range(5)]
    lines.append(_chat("My card is 4111 1111 1111 1111, mail me at jane.roe@gmail.com", "Noted, Jane."))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingest(catalog, [tmp_path / "train.jsonl"], IngestOptions(name="train"))
    with pytest.raises(RedactionError, match="pii"):
        redact_scan(catalog)
    scan = run_scan(catalog, ["pii"])
    original = catalog.query("SELECT * FROM records WHERE prompt LIKE 'My card%'")[0]

    result = redact_scan(catalog, scan.scan_id)
    assert result.flagged == 1 and len(result.versions) == 1 and result.versions[0].new
    version = result.versions[0]
    assert version.original == original["record_id"] and version.kinds == {"credit_card": 1, "email": 1}
    new = catalog.query("SELECT * FROM records WHERE record_id = ?", [version.redacted])[0]
    assert new["prompt"] == "My card is [CREDIT_CARD], mail me at [EMAIL]"
    assert new["response"] == "Noted, Jane." and new["parent_record_id"] == original["record_id"]
    row = catalog.query("SELECT * FROM record_versions WHERE record_id = ?", [version.redacted])[0]
    assert (row["parent_record_id"], row["kind"], row["actor"], row["source_id"]) == (
        original["record_id"],
        "redaction",
        "refinery:pii",
        scan.scan_id,
    )
    assert catalog.query("SELECT * FROM records WHERE record_id = ?", [original["record_id"]])[0] == original
    # the version has no source row: it is not training data until a snapshot policy says so
    assert catalog.scalar("SELECT count(*) FROM source_rows WHERE record_id = ?", [version.redacted]) == 0

    again = redact_scan(catalog)
    assert [(v.redacted, v.new) for v in again.versions] == [(version.redacted, False)]
    assert catalog.scalar("SELECT count(*) FROM record_versions") == 1


def test_cli_pii_redact(tmp_path: Path, workspace: Path) -> None:
    from refinery.cli import app

    runner = CliRunner()
    data = tmp_path / "train.jsonl"
    data.write_text(_chat("reach me at jane.roe@gmail.com", "ok") + "\n" + _chat("hello", "hi") + "\n")
    ws = ["--workspace", str(workspace)]
    assert runner.invoke(app, [*ws, "ingest", str(data)]).exit_code == 0
    bad = runner.invoke(app, [*ws, "pii", "redact", "--scan", "scan_nope"])
    assert bad.exit_code == 2 and "unknown scan" in bad.output
    assert runner.invoke(app, [*ws, "scan", "--checks", "pii"]).exit_code == 0
    done = runner.invoke(app, [*ws, "pii", "redact", "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    assert payload["flagged"] == 1 and payload["redacted"] == 1
