"""The dashboard: server-rendered HTML pages under ``/ui`` (no JS build step).

- ``/ui/login``: a token form; a valid token is kept in the ``refinery_token`` cookie (HttpOnly, SameSite=Strict,
  Secure over HTTPS); ``/ui/logout`` drops it. Every other page without a valid cookie redirects to the form.
- ``/ui``: recent jobs with their state and progress, scans with their HTML report, snapshots, adapters with their
  verdicts and place in the registry, review rounds with links to the Argilla UI.
- ``/ui/lineage/{id}``: the lineage tree of any artifact (``refinery.lineage``); ``/ui/jobs/{id}``: one job's
  state, progress, result and log tail.

The pages read through the same functions as the JSON API (``refinery.service.queries``, ``refinery.lineage``, the
job store). All catalog text is escaped; the Content-Security-Policy loads nothing from elsewhere and runs only the
page's one small script (by its hash), which refreshes the jobs table and an active job's page every few seconds.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from refinery.lineage import LineageError, lineage
from refinery.service import queries
from refinery.service.auth import COOKIE_NAME, Principal, authenticate
from refinery.workspace import Workspace
from schemas.errors import InputError

router = APIRouter(prefix="/ui", include_in_schema=False)

#: Rows of each table on the overview.
RECENT = 50
#: Seconds between refreshes of the jobs table and of an active job's page.
REFRESH_S = 3
#: Job states in which a job still changes.
ACTIVE_STATES = frozenset({"queued", "running"})
#: Lineage node kinds whose id the lineage page accepts (files, source rows and review rounds are not ids).
_LINKED_KINDS = frozenset({"record", "batch", "scan", "snapshot", "adapter", "eval", "promotion"})

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;background:#fafafa;margin:0}
header{background:#1f2937;color:#fff;padding:12px 20px;display:flex;gap:24px;align-items:center}
header h1{margin:0;font-size:20px}header a{color:#fff}header .who{margin-left:auto;opacity:.85}
main{max-width:1280px;margin:0 auto;padding:0 20px 40px}
h2{margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid #e2e2e2;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f0f0f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}pre{background:#fff;border:1px solid #e2e2e2;
padding:8px;overflow:auto;max-height:480px;white-space:pre-wrap}
.muted{color:#777}.error{background:#fde8e8;border:1px solid #f5b5b5;padding:8px 12px;border-radius:4px}
.state{padding:1px 6px;border-radius:3px;font-size:12px;background:#eee}.state-succeeded,.verdict-pass,
.status-promoted{background:#d9f5e1}.state-failed,.verdict-fail,.status-failed{background:#fde8e8}
.state-running{background:#dbeafe}.state-cancelled{background:#f3f3f3}
progress{width:140px;vertical-align:middle}
ul.tree{list-style:none;padding-left:20px;border-left:1px dotted #bbb}ul.tree.root{border-left:none;padding-left:0}
ul.tree li{margin:6px 0}.kind{font-weight:600;margin-right:4px}.facts{color:#444;font-size:13px}
form.inline{display:inline}table.facts-list{width:auto;min-width:50%}
.facts-table table{width:auto;margin:2px 0 4px;font-size:12px}
.login{max-width:460px;margin:60px auto;background:#fff;border:1px solid #ddd;padding:20px 24px;border-radius:6px}
.login input[type=password]{width:100%;box-sizing:border-box;padding:6px;margin:8px 0}
"""

#: Refreshes every element with ``data-refresh`` (a same-origin URL) and ``data-active="1"`` from that URL.
SCRIPT = """
(function(){
  function tick(){
    document.querySelectorAll('[data-refresh]').forEach(function(el){
      if(el.getAttribute('data-active')!=='1'){return;}
      fetch(el.getAttribute('data-refresh'),{credentials:'same-origin',cache:'no-store'})
        .then(function(r){return r.ok?r.text():null;})
        .then(function(t){if(t===null){return;}var box=document.createElement('div');box.innerHTML=t;
          var fresh=box.firstElementChild;if(fresh){el.replaceWith(fresh);}})
        .catch(function(){});
    });
  }
  setInterval(tick, %d);
})();
""" % (REFRESH_S * 1000)  # noqa: UP031 (the braces of the script stay as they are)


def content_security_policy() -> str:
    """Nothing from elsewhere; inline styles; only :data:`SCRIPT` runs (by its hash); fetches and forms go to this
    server only; no framing."""
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        f"script-src 'sha256-{digest}'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    )


_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- rendering helpers -------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escaped text of any value (None -> empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _when(value: Any) -> str:
    if value is None:
        return ""
    text = value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value).replace("T", " ")
    return _e(text[:19])


def _path(*parts: str) -> str:
    """A URL path with each part percent-encoded (ids are plain, but nothing is trusted)."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


def _lineage_link(identifier: Any) -> str:
    if not identifier:
        return ""
    return f'<a href="{_e(_path("ui", "lineage", str(identifier)))}"><code>{_e(identifier)}</code></a>'


def _state(state: Any) -> str:
    return f'<span class="state state-{_e(state)}">{_e(state)}</span>'


def _table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "", numeric: Sequence[str] = ()
) -> str:
    """A table of already-rendered cells (each cell's HTML is the caller's, built from escaped values)."""
    id_attr = f' id="{table_id}"' if table_id else ""
    if not rows:
        return f'<p class="muted"{id_attr}>(none)</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{cell}</td>' if c in numeric else f"<td>{cell}</td>" for c, cell in
                         zip(columns, row, strict=True)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table{id_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str, principal: Principal | None, status_code: int = 200) -> HTMLResponse:
    who = (
        f'<span class="who">{_e(principal.name)} ({_e(principal.role)}) · <a href="/ui/logout">log out</a></span>'
        if principal is not None
        else ""
    )
    text = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>{_e(title)} · Refinery</title><style>{CSS}</style></head><body>"
        f'<header><h1><a href="/ui">Refinery</a></h1><span>{_e(title)}</span>{who}</header>'
        f"<main>{body}</main><script>{SCRIPT}</script></body></html>"
    )
    return HTMLResponse(text, status_code=status_code, headers=_HEADERS)


def _fragment(text: str) -> HTMLResponse:
    return HTMLResponse(text, headers=_HEADERS)


def _progress(progress: Mapping[str, Any] | None) -> str:
    """A job's current progress bar (``REFINERY_PROGRESS_FILE``'s object) as a bar and a line of text."""
    if not progress:
        return ""
    done, total = progress.get("done"), progress.get("total")
    text = _e(progress.get("description") or "")
    if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
        share = min(max(done / total, 0.0), 1.0)
        return (
            f'<progress max="1" value="{share:.4f}"></progress> {share:.0%} '
            f'<span class="muted">{text} ({_num(done)} of {_num(total)})</span>'
        )
    return f'<span class="muted">{text}{" " + _num(done) if done is not None else ""}</span>'


def _safe_url(url: Any) -> str | None:
    """``url`` when it is an http(s) address, else None (a catalog value is never trusted as a link)."""
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else None


# -- who is asking -------------------------------------------------------------------------------------------------


def _signed_in(request: Request) -> Principal | None:
    """The holder of the dashboard cookie's token, or None (no cookie, or a token unknown or revoked)."""
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    try:
        return authenticate(request, token)
    except HTTPException:
        return None


def _to_login() -> RedirectResponse:
    return RedirectResponse("/ui/login", status_code=303, headers={"Cache-Control": "no-store"})


def _workspace(request: Request) -> Workspace:
    workspace: Workspace = request.app.state.workspace
    return workspace


# -- login ---------------------------------------------------------------------------------------------------------


def _login_form(error: str | None = None) -> str:
    alert = f'<p class="error" id="login-error">{_e(error)}</p>' if error else ""
    return (
        '<div class="login"><h2>Sign in</h2><p>Paste an API token (<code>refinery token create</code>). It is kept '
        "in a cookie that scripts cannot read, sent only to this server.</p>"
        f'{alert}<form method="post" action="/ui/login"><label for="token">Token</label>'
        '<input type="password" id="token" name="token" autocomplete="off" required>'
        '<button type="submit" id="sign-in">Sign in</button></form></div>'
    )


@router.get("/login")
def login_page(request: Request) -> Response:
    if _signed_in(request) is not None:
        return RedirectResponse("/ui", status_code=303)
    return _page("Sign in", _login_form(), None)


@router.post("/login")
def login(request: Request, token: str = Form("")) -> Response:
    try:
        authenticate(request, token.strip())
    except HTTPException:
        return _page("Sign in", _login_form("That token is not valid: unknown or revoked."), None, 401)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        token.strip(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    response = _to_login()
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


# -- the overview --------------------------------------------------------------------------------------------------


def _jobs_table(jobs: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            f'<a href="{_e(_path("ui", "jobs", str(j["job_id"])))}"><code>{_e(j["job_id"])}</code></a>',
            _e(j.get("kind")),
            _state(j.get("state")),
            _progress(j.get("progress")) if j.get("state") in ACTIVE_STATES else _e(_one_line(j.get("error"))),
            _e(j.get("created_by")),
            _when(j.get("created_at")),
            _when(j.get("finished_at")),
        ]
        for j in jobs
    ]
    table = _table(["job", "kind", "state", "progress / error", "by", "submitted", "finished"], rows, "jobs-table")
    return f'<div id="jobs" data-refresh="/ui/fragments/jobs" data-active="1">{table}</div>'


def _one_line(text: Any, limit: int = 160) -> str:
    if not text:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _scans_table(scans: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for s in scans:
        sid = str(s["scan_id"])
        report = (
            f'<a href="{_e(_path("scans", sid, "report"))}" class="report">report</a>'
            if s.get("status") == "complete"
            else ""
        )
        rows.append(
            [_lineage_link(sid), _state(s.get("status")), _num(s.get("records")), _when(s.get("started_at")),
             _when(s.get("finished_at")), report]
        )  # fmt: skip
    return _table(["scan", "status", "records", "started", "finished", "quality report"], rows, "scans-table",
                  numeric=["records"])  # fmt: skip


def _snapshots_table(snapshots: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [_lineage_link(s["snapshot_id"]), _when(s.get("created_at")), _num(s.get("train")),
         _num(s.get("validation")), _num(s.get("test")), _lineage_link(s.get("scan_id")),
         _lineage_link(s.get("parent_id"))]
        for s in snapshots
    ]  # fmt: skip
    columns = ["snapshot", "created", "train", "validation", "test", "scan", "parent"]
    return _table(columns, rows, "snapshots-table", numeric=["train", "validation", "test"])


def _adapters_table(adapters: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for a in adapters:
        verdict = a.get("verdict")
        ci = ""
        if a.get("ci_low") is not None and a.get("ci_high") is not None:
            ci = f"{_num(a['ci_low'])} to {_num(a['ci_high'])}"
        rows.append(
            [_lineage_link(a["adapter_id"]), f'<span class="state status-{_e(a.get("status"))}">'
             f'{_e(a.get("status"))}</span>' + (" <b>current</b>" if a.get("is_current") else ""),
             f'<span class="state verdict-{_e(verdict)}">{_e(verdict)}</span>' if verdict else "",
             _lineage_link(a.get("eval_id")), _e(a.get("metric")), _num(a.get("adapter_score")), ci,
             _when(a.get("promoted_at")), _lineage_link(a.get("snapshot_id")), _when(a.get("created_at"))]
        )  # fmt: skip
    columns = ["adapter", "registry", "verdict", "eval", "metric", "score", "CI", "promoted", "snapshot", "created"]
    return _table(columns, rows, "adapters-table", numeric=["score"])


def _argilla_link(round_row: Mapping[str, Any]) -> str:
    base = _safe_url(round_row.get("api_url"))
    if base is None:
        return _e(round_row.get("dataset_name"))
    dataset_id = round_row.get("argilla_dataset_id")
    url = base.rstrip("/") + (_path("dataset", str(dataset_id), "annotation-mode") if dataset_id else "")
    return f'<a href="{_e(url)}" rel="noopener noreferrer" class="argilla">{_e(round_row.get("dataset_name"))}</a>'


def _rounds_table(rounds: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [_e(r["round_name"]), _argilla_link(r), _lineage_link(r.get("scan_id")), _e(r.get("checks")),
         _num(r.get("items")), _num(r.get("pushed")), _num(r.get("responses")), _e(r.get("policy")),
         _when(r.get("created_at"))]
        for r in rounds
    ]  # fmt: skip
    columns = ["round", "Argilla dataset", "scan", "checks", "items", "pushed", "responses", "policy", "created"]
    return _table(columns, rows, "rounds-table", numeric=["items", "pushed", "responses"])


_LINEAGE_FORM = (
    '<form method="get" action="/ui/lineage" class="inline"><label for="lineage-id">Lineage of any id </label>'
    '<input id="lineage-id" name="id" placeholder="rec_… batch_… scan_… snap_… adp_… eval_… promo_…" size="48">'
    '<button type="submit">show</button></form>'
)


@router.get("")
def overview(request: Request) -> Response:
    principal = _signed_in(request)
    if principal is None:
        return _to_login()
    ws = _workspace(request)
    catalog = ws.catalog
    sections = [
        f"<p>{_LINEAGE_FORM}</p>",
        f'<section id="jobs-section"><h2>Jobs</h2>{_jobs_table(queries.recent_jobs(ws, RECENT))}</section>',
        f'<section id="scans"><h2>Scans</h2>{_scans_table(queries.list_scans(catalog, RECENT))}</section>',
        f'<section id="snapshots"><h2>Snapshots</h2>{_snapshots_table(queries.list_snapshots(catalog, RECENT))}'
        "</section>",
        f'<section id="adapters"><h2>Adapters</h2>{_adapters_table(queries.list_adapters(catalog))}</section>',
        f'<section id="rounds"><h2>Review rounds</h2>{_rounds_table(queries.list_review_rounds(catalog, RECENT))}'
        "</section>",
        f'<p class="muted">The latest {RECENT} of each; times are UTC.</p>',
    ]
    return _page("Overview", "".join(sections), principal)


@router.get("/fragments/jobs")
def jobs_fragment(request: Request) -> Response:
    if _signed_in(request) is None:
        return HTMLResponse("", status_code=401, headers=_HEADERS)
    return _fragment(_jobs_table(queries.recent_jobs(_workspace(request), RECENT)))


# -- one job -------------------------------------------------------------------------------------------------------


def _pretty(value: Any) -> str:
    return f"<pre>{_e(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"


def _job_detail(job: Mapping[str, Any]) -> str:
    jid = str(job["job_id"])
    active = job.get("state") in ACTIVE_STATES
    facts = {
        "kind": _e(job.get("kind")),
        "state": _state(job.get("state")),
        "progress": _progress(job.get("progress")) if active else "",
        "submitted by": _e(job.get("created_by")),
        "submitted": _when(job.get("created_at")),
        "started": _when(job.get("started_at")),
        "finished": _when(job.get("finished_at")),
        "error": f'<span class="error">{_e(job["error"])}</span>' if job.get("error") else "",
    }
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in facts.items() if v)
    parts = [
        f"<h2>Job <code>{_e(jid)}</code></h2>",
        f'<table id="job-facts" class="facts-list"><tbody>{rows}</tbody></table>',
        "<h3>Parameters</h3>",
        _pretty(job.get("params") or {}),
    ]
    if job.get("result") is not None:
        parts += ["<h3>Result</h3>", _pretty(job["result"])]
    tail = job.get("log_tail") or ""
    tail = "\n".join(tail) if isinstance(tail, list) else str(tail)
    parts += ["<h3>Log (last lines)</h3>", f'<pre id="job-log">{_e(tail)}</pre>']
    refresh = _e(_path("ui", "fragments", "jobs", jid))
    return f'<div id="job" data-refresh="{refresh}" data-active="{1 if active else 0}">{"".join(parts)}</div>'


def _job_or_404(request: Request, job_id: str) -> Mapping[str, Any] | None:
    try:
        return queries.job_detail(_workspace(request), job_id)
    except InputError:
        return None


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    principal = _signed_in(request)
    if principal is None:
        return _to_login()
    job = _job_or_404(request, job_id)
    if job is None:
        return _page("Job", f'<p class="error">No job {_e(job_id)}.</p>', principal, 404)
    return _page(f"Job {job_id}", _job_detail(job), principal)


@router.get("/fragments/jobs/{job_id}")
def job_fragment(request: Request, job_id: str) -> Response:
    if _signed_in(request) is None:
        return HTMLResponse("", status_code=401, headers=_HEADERS)
    job = _job_or_404(request, job_id)
    if job is None:
        return HTMLResponse("", status_code=404, headers=_HEADERS)
    return _fragment(_job_detail(job))


# -- lineage -------------------------------------------------------------------------------------------------------


def _scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _fact(key: str, value: Any) -> str:
    """One fact of a lineage node: a value, a short flat mapping or list inline, anything bigger folded as JSON."""
    if isinstance(value, dict | list):
        if not value:
            return ""
        flat = value.values() if isinstance(value, dict) else value
        if len(value) <= 8 and all(_scalar(v) for v in flat):
            shown = (
                ", ".join(f"{_e(k)} {_num(v)}" for k, v in value.items())
                if isinstance(value, dict)
                else ", ".join(_num(v) for v in value)
            )
            return f"<span>{_e(key)}: <b>{shown}</b></span>"
        if isinstance(value, list) and len(value) <= 20 and all(_flat_row(v) for v in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            rows = [[_cell(row.get(c)) for c in columns] for row in value]
            return f'<div class="facts-table"><b>{_e(key)}</b>{_table(columns, rows)}</div>'
        summary = f"{_e(key)} ({len(value)})"
        return f"<details><summary>{summary}</summary>{_pretty(value)}</details>"
    return f"<span>{_e(key)}=<b>{_num(value) if not hasattr(value, 'strftime') else _when(value)}</b></span>"


def _flat_row(value: Any) -> bool:
    return isinstance(value, dict) and all(_scalar(v) for v in value.values())


#: Id prefixes the lineage page accepts (refinery.lineage): such a value in a node's facts becomes a link.
_ID_PREFIXES = ("rec_", "batch_", "scan_", "snap_", "adp_", "eval_", "promo_")


def _cell(value: Any) -> str:
    if isinstance(value, str) and value.startswith(_ID_PREFIXES):
        return _lineage_link(value)
    return _when(value) if hasattr(value, "strftime") else _num(value)


def _tree_node(node: Mapping[str, Any]) -> str:
    kind, identifier = str(node.get("kind", "")), node.get("id")
    label = _lineage_link(identifier) if kind in _LINKED_KINDS else f"<code>{_e(identifier)}</code>"
    if kind == "scan":
        label += f' · <a href="{_e(_path("scans", str(identifier), "report"))}">report</a>'
    facts = [_fact(k, v) for k, v in node.items() if k not in ("kind", "id", "parents") and v not in (None, "")]
    children = "".join(_tree_node(p) for p in node.get("parents", []))
    return (
        f'<li data-kind="{_e(kind)}"><span class="kind">{_e(kind)}</span>{label} '
        f'<div class="facts">{" ".join(f for f in facts if f)}</div>'
        + (f'<ul class="tree">{children}</ul>' if children else "")
        + "</li>"
    )


@router.get("/lineage")
def lineage_lookup(request: Request, given: str = Query("", alias="id")) -> Response:
    if _signed_in(request) is None:
        return _to_login()
    target = given.strip()
    return RedirectResponse(_path("ui", "lineage", target) if target else "/ui", status_code=303)


@router.get("/lineage/{artifact_id}")
def lineage_page(request: Request, artifact_id: str) -> Response:
    principal = _signed_in(request)
    if principal is None:
        return _to_login()
    try:
        tree = lineage(_workspace(request).catalog, artifact_id)
    except LineageError as exc:
        return _page("Lineage", f'<p class="error" id="lineage-error">{_e(exc)}</p>', principal, 404)
    body = (
        f"<p>{_LINEAGE_FORM}</p><h2>Lineage of <code>{_e(artifact_id)}</code></h2>"
        f'<ul class="tree root" id="lineage">{_tree_node(tree)}</ul>'
        f'<p class="muted">As JSON: <a href="{_e(_path("lineage", artifact_id))}">/lineage/{_e(artifact_id)}</a></p>'
    )
    return _page(f"Lineage {artifact_id}", body, principal)
