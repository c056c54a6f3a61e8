"""The report page: one self-contained HTML document (inline CSS, a small sorting and filtering script allowed by
its hash in the Content-Security-Policy, plots as data: images). All record text is user data and is
HTML-escaped; long texts are cut, with the full text in a ``<details>`` element."""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curation.report.collect import SIZE_BUCKETS, RecordView, ReportData, ReportResult, collect_report
from curation.report.embedding_map import MAX_POINTS, EmbeddingSource
from curation.report.plots import cluster_sizes_png, embedding_png, histogram_png
from schemas.atomic import write_text_atomic
from schemas.catalog import Catalog
from schemas.progress import progress

#: Characters of a record text shown before the rest goes into a <details> element.
TEXT_LIMIT = 360


def _e(value: Any) -> str:
    """Escaped text of any value (None -> empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _text(text: str | None, limit: int = TEXT_LIMIT) -> str:
    """A record text, escaped; longer than ``limit``: cut, with the full text in a <details> element."""
    text = text or ""
    if len(text) <= limit:
        return f'<div class="text">{_e(text) or "<em>(empty)</em>"}</div>'
    return (
        f'<div class="text">{_e(text[:limit])}…</div><details><summary>full text ({len(text):,} characters)'
        f'</summary><div class="text full">{_e(text)}</div></details>'
    )


def _table(
    rows: Sequence[Mapping[str, Any]], table_id: str, numeric: Sequence[str] = (), filter_box: bool = True
) -> str:
    """A sortable table (click a header); with ``filter_box`` a text box above it hides non-matching rows.
    ``table_id`` must be unique in the page (sections use plain names, tables start with ``table-``)."""
    if not rows:
        return '<p class="muted">(none)</p>'
    columns = list(rows[0])
    head = "".join(f'<th data-col="{i}">{_e(c)}</th>' for i, c in enumerate(columns))
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row[c]
            if c in numeric:
                sort_key = "" if value is None else _e(value)
                cells.append(f'<td class="num" data-sort="{sort_key}">{_num(value)}</td>')
            else:
                cells.append(f"<td>{_e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    box = (
        f'<input class="filter" type="search" placeholder="filter rows..." data-filter-for="{table_id}">'
        if filter_box
        else ""
    )
    return (
        f'{box}<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _img(png: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{png}" alt="{_e(alt)}">'


def _summary_section(data: ReportData) -> str:
    scan, ds = data.scan, data.dataset
    facts = {
        "scan": scan["scan_id"],
        "scan started": scan.get("started_at"),
        "scan finished": scan.get("finished_at"),
        "records scanned": scan.get("records"),
        "records in the catalog": ds["records"],
        "training records": ds["training_records"],
        "eval items": f"{ds['eval_items']:,} in {ds['eval_sets']:,} eval set(s)",
        "source rows": ds["source_rows"],
        "quarantined rows": ds["quarantined_rows"],
        "ingest batches": ds["batches"],
        "checks run": ", ".join(c.name for c in data.checks) or "none",
    }
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_num(v)}</dd>" for k, v in facts.items())
    parts = [f'<section id="summary"><h2>Summary</h2><dl class="facts">{dl}</dl>']
    if data.failed:
        items = "".join(f"<li><b>{_e(n)}</b>: {_e(err)}</li>" for n, err in data.failed.items())
        parts.append(
            f'<div class="alert"><b>{len(data.failed)} check(s) failed</b> in this scan:<ul>{items}</ul></div>'
        )
    else:
        parts.append('<p class="ok">Every check ran without error.</p>')
    batch_rows = [
        {k: b[k] for k in ("name", "purpose", "eval_set", "format", "rows_read", "ingested", "quarantined")}
        | {"new records": b["new_records"], "status": b["status"], "started": b["started_at"], "batch": b["batch_id"]}
        for b in data.batches
    ]
    numeric = ("rows_read", "ingested", "quarantined", "new records")
    parts.append(
        f"<h3>Ingest batches</h3>{_table(batch_rows, 'table-batches', numeric, filter_box=len(batch_rows) > 8)}"
    )
    q_rows = [{"reason": q["reason"], "rows": q["rows"], "example": q["example"]} for q in data.quarantine]
    parts.append(
        f"<h3>Quarantined rows by reason</h3>{_table(q_rows, 'table-quarantine', ('rows',), filter_box=False)}"
    )
    parts.append("</section>")
    return "".join(parts)


#: Summary keys shown in the per-check table's notes column.
NOTE_KEYS = ("clusters", "duplicates", "conflicting_clusters", "contaminated", "eval_items", "scope", "verified_pairs")


def _checks_section(data: ReportData) -> str:
    rows = []
    for c in data.checks:
        notes = [f"{k}: {c.summary[k]}" for k in NOTE_KEYS if k in c.summary]
        notes += [f"pairs: {c.pairs}"] if c.pairs else []
        notes += [f"contamination hits: {c.contamination_hits}"] if c.contamination_hits else []
        rows.append(
            {
                "check": c.name,
                "status": f"FAILED: {c.error}" if c.error else "ok",
                "flagged": c.flagged,
                "total": c.records,
                "flagged %": c.flagged_pct,
                "mean score": c.mean_score,
                "threshold": c.threshold,
                "notes": "; ".join(notes),
            }
        )
    bars = "".join(
        f'<div class="bar-row"><span class="bar-label">{_e(c.name)}</span><span class="bar"><span class="fill" '
        f'style="width:{min(100.0, c.flagged_pct or 0.0):.2f}%"></span></span><span class="bar-value">'
        f"{_num(c.flagged)} / {_num(c.records)} ({c.flagged_pct or 0:.2f}%)</span></div>"
        for c in data.checks
        if not c.error
    )
    table = _table(rows, "table-checks", ("flagged", "total", "flagged %", "mean score", "threshold"))
    return f'<section id="checks"><h2>Per-check counts</h2><div class="bars">{bars}</div>{table}</section>'


def _snapshots_section(data: ReportData) -> str:
    """What each snapshot made from this scan did with its findings, per check."""
    intro = (
        '<p class="note">Per snapshot made from this scan: the records each check kept out of it (alone: no other '
        "check or rule would have), and the members it changed (edited after a review the check sent them to). "
        "Each exclusion's finding: <code>snapshot_exclusion_causes</code>.</p>"
    )
    numeric = ("members", "dropped", "dropped_alone", "changed")
    table = _table(data.snapshot_effects, "table-snapshot-effects", numeric)
    return f'<section id="snapshots"><h2>What the snapshots did with it</h2>{intro}{table}</section>'


def _scores_section(data: ReportData) -> str:
    figures = []
    for c in data.checks:
        png = histogram_png(c)
        if png is None:
            continue
        where = (
            f"threshold {c.threshold:.4g} ({_e(c.threshold_source)})"
            if c.threshold is not None
            else "threshold not known"
        )
        figures.append(f"<figure>{_img(png, f'score histogram of {c.name}')}<figcaption>{_e(c.name)}: {where}"
                       "</figcaption></figure>")  # fmt: skip
    body = "".join(figures) or '<p class="muted">No scores stored for this scan.</p>'
    return f'<section id="scores"><h2>Score histograms</h2><div class="grid">{body}</div></section>'


def _duplicates_section(data: ReportData) -> str:
    png = cluster_sizes_png(data.cluster_sizes)
    if png is None:
        empty = '<p class="muted">No clusters in this scan.</p>'
        return f'<section id="duplicates"><h2>Duplicate clusters</h2>{empty}</section>'
    labels = [label for label, _, _ in SIZE_BUCKETS if any(label in s for s in data.cluster_sizes.values())]
    rows = [
        {
            "check": check,
            **{f"size {label}": counts.get(label, 0) for label in labels},
            "clusters": sum(counts.values()),
        }
        for check, counts in data.cluster_sizes.items()
    ]
    numeric = [f"size {label}" for label in labels] + ["clusters"]
    return (
        f'<section id="duplicates"><h2>Duplicate clusters</h2><figure>{_img(png, "duplicate cluster sizes")}'
        f"<figcaption>How many clusters of each size every duplicate check found.</figcaption></figure>"
        f"{_table(rows, 'table-cluster-sizes', numeric, filter_box=False)}</section>"
    )


def _map_section(data: ReportData) -> str:
    if data.embedding_map is None:
        return f'<section id="map"><h2>Embedding map</h2><p class="note">{_e(data.embedding_note)}</p></section>'
    png = embedding_png(data.embedding_map)
    return (
        f'<section id="map"><h2>Embedding map</h2><figure>{_img(png, "2-D map of prompt embeddings")}<figcaption>'
        f"Prompt embeddings projected on their two principal components, coloured by the check that flagged each "
        f"record: {_e(data.embedding_note)}.</figcaption></figure></section>"
    )


def _record_html(view: RecordView) -> str:
    label = f' <span class="tag">label: {_e(view.label)}</span>' if view.label else ""
    return (
        f'<div class="rec"><div class="rec-head"><b>{_e(view.title)}</b> <code>{_e(view.record_id)}</code>{label}'
        f'</div><div class="field">prompt</div>{_text(view.prompt)}<div class="field">response</div>'
        f"{_text(view.response)}</div>"
    )


def _examples_section(data: ReportData) -> str:
    parts = ['<section id="examples"><h2>Top examples per check</h2>']
    if not data.examples:
        parts.append('<p class="muted">No check flagged a record.</p>')
    for check, examples in data.examples.items():
        parts.append(f'<h3 id="ex-{_e(check)}">{_e(check)}</h3>')
        for ex in examples:
            metrics = " · ".join(f"{_e(k)} <b>{_num(v)}</b>" for k, v in ex.metrics.items())
            reason = f'<div class="reason">{_e(ex.reason)}</div>' if ex.reason else ""
            cls = "pair" if ex.right else "single"
            right = _record_html(ex.right) if ex.right else ""
            parts.append(
                f'<div class="example"><div class="metrics">{metrics}</div>{reason}'
                f'<div class="{cls}">{_record_html(ex.left)}{right}</div></div>'
            )
    parts.append("</section>")
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;background:#fafafa;margin:0}
main{max-width:1200px;margin:0 auto;padding:0 20px 40px}
header{background:#1f2937;color:#fff;padding:16px 20px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cbd5e1}
nav{max-width:1200px;margin:0 auto;padding:8px 20px}nav a{margin-right:14px;color:#2563eb;text-decoration:none}
h2{border-bottom:2px solid #e5e7eb;padding-bottom:4px;margin-top:32px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}dt{font-weight:600}dd{margin:0}
.alert{background:#fee2e2;border:1px solid #f87171;padding:8px 12px;border-radius:6px}
.ok{color:#166534}.muted{color:#6b7280}.note{background:#fef9c3;padding:8px 12px;border-radius:6px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top;max-width:420px;
word-break:break-word}
th{background:#f3f4f6;cursor:pointer;user-select:none;white-space:nowrap}
th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}td.num{text-align:right;font-variant-numeric:tabular-nums}
input.filter{margin:4px 0;padding:3px 6px;width:260px}
.bars{margin:8px 0 12px}.bar-row{display:flex;align-items:center;gap:8px;margin:2px 0}
.bar-label{width:180px;font-family:monospace;overflow:hidden;text-overflow:ellipsis}
.bar{flex:0 0 360px;height:12px;background:#e5e7eb;border-radius:3px;overflow:hidden}
.fill{display:block;height:100%;background:#d62728}.bar-value{color:#374151;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:6px}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12px;color:#4b5563}
.example{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:8px;margin:8px 0}
.metrics{font-size:12px;color:#374151}.reason{font-size:12px;color:#6b7280;margin:2px 0 6px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}.single{max-width:760px}
.rec{border-left:3px solid #93c5fd;padding-left:8px;min-width:0}.pair .rec:first-child{border-color:#f87171}
.rec-head{font-size:12px}.field{font-size:11px;text-transform:uppercase;color:#6b7280;margin-top:4px}
.text{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace;font-size:12.5px;
background:#f9fafb;padding:4px 6px;border-radius:4px;max-height:240px;overflow:auto}
.text.full{max-height:480px}details summary{font-size:12px;color:#2563eb;cursor:pointer}
.tag{background:#e0e7ff;border-radius:3px;padding:0 4px;font-size:11px}code{font-size:11px}
"""

SCRIPT = """
(function(){
  function key(cell){var v=cell.getAttribute('data-sort');if(v===null){v=cell.textContent.trim();}
    var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?{n:n}:{s:v.toLowerCase()};}
  function cmp(a,b){if(a.n!==undefined&&b.n!==undefined){return a.n-b.n;}
    if(a.n!==undefined){return -1;}if(b.n!==undefined){return 1;}return a.s<b.s?-1:a.s>b.s?1:0;}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var asc=!th.classList.contains('asc');
        table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
        th.classList.add(asc?'asc':'desc');
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(r1,r2){var c=cmp(key(r1.cells[col]),key(r2.cells[col]));return asc?c:-c;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.querySelectorAll('input.filter').forEach(function(box){
    var table=document.getElementById(box.getAttribute('data-filter-for'));
    box.addEventListener('input',function(){var q=box.value.toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows,function(r){
        r.style.display=r.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});
  });
})();
"""


def _content_security_policy() -> str:
    """Nothing from the network; inline styles and data: images; only the report's own script may run (by its
    hash), so even text that escaped escaping could not execute."""
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document (no external resource of any kind)."""
    sid = data.scan["scan_id"]
    with progress("report: render", total=7) as bar:
        sections = []
        for build in (
            _summary_section,
            _checks_section,
            _snapshots_section,
            _scores_section,
            _duplicates_section,
            _map_section,
            _examples_section,
        ):
            sections.append(build(data))
            bar.advance()
    nav = "".join(
        f'<a href="#{anchor}">{title}</a>'
        for anchor, title in (
            ("summary", "Summary"),
            ("checks", "Counts"),
            ("snapshots", "Snapshots"),
            ("scores", "Scores"),
            ("duplicates", "Duplicates"),
            ("map", "Map"),
            ("examples", "Examples"),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_content_security_policy()}">'
        f"<title>Refinery quality report: {_e(sid)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Refinery quality report</h1><p>scan <code>{_e(sid)}</code> · generated "
        f"{_e(data.generated_at)}</p></header><nav>{nav}</nav><main>{''.join(sections)}</main>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_report(
    catalog: Catalog,
    path: Path,
    scan_id: str | None = None,
    examples: int = 5,
    max_points: int = MAX_POINTS,
    compute_embeddings: bool = False,
    embeddings: EmbeddingSource | None = None,
) -> ReportResult:
    """Collect, render and atomically write the report for ``scan_id`` (default: the latest complete scan)."""
    data = collect_report(catalog, scan_id, examples, max_points, compute_embeddings, embeddings)
    text = render_html(data)
    write_text_atomic(path, text)
    return ReportResult(path, data.scan["scan_id"], [c.name for c in data.checks], len(text.encode("utf-8")))
