"""HTML for the console: one page layout, tables, times for people, charts as SVG.

Everything is rendered on the server; the only JavaScript keeps the relative times
current, confirms operator actions and (when ticked) reloads the page every few
seconds. Every value goes through :func:`esc`.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final

__all__ = ["Cell", "ago", "badge", "bar_chart", "esc", "page", "table", "when"]

Cell = str  # already-escaped HTML

NAV: Final = (
    ("/console", "Overview"),
    ("/console/sagas", "Sagas"),
    ("/console/transactions", "2PC"),
    ("/console/outbox", "Outbox"),
    ("/console/idempotency", "Idempotency"),
    ("/console/replication", "Replication"),
    ("/console/metrics", "Metrics"),
)

CSS: Final = """
:root { --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f7f8fa; --ok:#067647;
  --warn:#b54708; --bad:#b42318; --info:#175cd3; --accent:#344054; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; gap:24px; padding:0 24px; height:52px;
  background:#101828; color:#fff; }
header .brand { font-weight:600; letter-spacing:.2px; white-space:nowrap; }
header nav { display:flex; gap:4px; flex:1; }
header nav a { color:#d0d5dd; text-decoration:none; padding:6px 10px; border-radius:6px;
  white-space:nowrap; }
header nav a.here, header nav a:hover { background:#344054; color:#fff; }
header .who { color:#d0d5dd; white-space:nowrap; font-size:13px; }
header .who a { color:#d0d5dd; margin-left:8px; }
main { padding:20px 24px 40px; max-width:1400px; }
h1 { font-size:20px; margin:4px 0 16px; }
h2 { font-size:15px; margin:24px 0 8px; color:var(--accent); }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:8px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 16px;
  min-width:150px; }
.card .n { font-size:24px; font-weight:600; font-variant-numeric: tabular-nums; }
.card .l { color:var(--muted); font-size:12px; white-space:nowrap; }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line);
  border-radius:8px; overflow:hidden; width:100%; }
th, td { text-align:left; padding:7px 12px; border-bottom:1px solid var(--line);
  white-space:nowrap; vertical-align:top; }
th { background:#f2f4f7; color:var(--muted); font-weight:600; font-size:12px;
  text-transform:uppercase; letter-spacing:.3px; }
td.wrap { white-space:normal; max-width:520px; }
tr:last-child td { border-bottom:none; }
td.num { text-align:right; font-variant-numeric: tabular-nums; }
code, .id { font:12.5px ui-monospace, SFMono-Regular, Menlo, monospace; }
.id { display:inline-block; max-width:260px; overflow:hidden; text-overflow:ellipsis;
  vertical-align:bottom; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
  font-weight:600; white-space:nowrap; }
.b-ok { background:#dcfae6; color:var(--ok); } .b-warn { background:#fef0c7; color:var(--warn); }
.b-bad { background:#fee4e2; color:var(--bad); } .b-info { background:#d1e9ff; color:var(--info); }
.b-none { background:#f2f4f7; color:var(--muted); }
.muted { color:var(--muted); }
.tabs { display:flex; gap:6px; margin-bottom:12px; flex-wrap:wrap; }
.tabs a { padding:4px 10px; border:1px solid var(--line); border-radius:16px; background:#fff;
  color:var(--ink); text-decoration:none; white-space:nowrap; }
.tabs a.here { background:#101828; color:#fff; border-color:#101828; }
button, .button { font:inherit; padding:5px 12px; border-radius:6px; border:1px solid #d0d5dd;
  background:#fff; cursor:pointer; white-space:nowrap; }
button.primary { background:#101828; color:#fff; border-color:#101828; }
form.inline { display:inline; margin:0; }
form.inline + form.inline { margin-left:8px; }
.flash { padding:10px 14px; border-radius:8px; margin-bottom:16px; border:1px solid; }
.flash.ok { background:#ecfdf3; border-color:#abefc6; color:var(--ok); }
.flash.bad { background:#fef3f2; border-color:#fecdca; color:var(--bad); }
.timeline { list-style:none; padding:0; margin:0; background:#fff; border:1px solid var(--line);
  border-radius:8px; }
.timeline li { display:grid; grid-template-columns: 28px 200px 130px 1fr; gap:8px;
  padding:10px 14px; border-bottom:1px solid var(--line); align-items:start; }
.timeline li:last-child { border-bottom:none; }
.dot { width:12px; height:12px; border-radius:50%; margin-top:4px; background:#d0d5dd; }
.dot.ok { background:var(--ok); } .dot.warn { background:var(--warn); }
.dot.bad { background:var(--bad); } .dot.info { background:var(--info); }
.bar-row { display:flex; gap:16px; flex-wrap:wrap; }
.chart { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px; }
.chart .t { font-weight:600; margin-bottom:6px; }
.login { max-width:340px; margin:80px auto; background:#fff; border:1px solid var(--line);
  border-radius:10px; padding:24px; }
.login input { width:100%; padding:8px; margin:4px 0 12px; border:1px solid #d0d5dd;
  border-radius:6px; font:inherit; }
.toolbar { display:flex; justify-content:space-between; align-items:center; }
"""

JS: Final = """
function human(s) {
  if (s < 0) s = 0;
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function tick() {
  const now = Date.now() / 1000;
  document.querySelectorAll("[data-t]").forEach(e => {
    e.textContent = human(now - parseFloat(e.dataset.t));
  });
}
tick(); setInterval(tick, 5000);
document.querySelectorAll("form[data-confirm]").forEach(f => {
  f.addEventListener("submit", ev => { if (!confirm(f.dataset.confirm)) ev.preventDefault(); });
});
const auto = document.getElementById("auto");
if (auto) {
  auto.checked = localStorage.getItem("console-auto") === "1";
  auto.addEventListener("change",
    () => localStorage.setItem("console-auto", auto.checked ? "1" : "0"));
  setInterval(() => { if (auto.checked) location.reload(); }, 5000);
}
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(epoch: float | None) -> Cell:
    """A time for people: "3 min ago", the exact UTC time on hover."""
    if epoch is None:
        return '<span class="muted">-</span>'
    exact = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<span title="{exact}" data-t="{epoch:.3f}">{esc(ago(epoch))}</span>'


def ago(epoch: float, now: float | None = None) -> str:
    seconds = max(0.0, (time.time() if now is None else now) - epoch)
    if seconds < 60:
        return f"{round(seconds)} s ago"
    if seconds < 3600:
        return f"{round(seconds / 60)} min ago"
    if seconds < 86400:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} d ago"


_KINDS: Final = {
    "completed": "ok",
    "committed": "ok",
    "delivered": "ok",
    "ok": "ok",
    "confirmed": "ok",
    "compensated": "warn",
    "compensating": "warn",
    "pending": "none",
    "running": "info",
    "started": "info",
    "in_progress": "info",
    "stuck": "bad",
    "failed": "bad",
    "parked": "bad",
    "down": "bad",
    "cancelled": "warn",
}


def badge(state: object, kind: str | None = None) -> Cell:
    text = str(state)
    return f'<span class="badge b-{kind or _KINDS.get(text, "none")}">{esc(text)}</span>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Cell]], *, numeric: Sequence[int] = ()
) -> Cell:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">nothing here</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def bar_chart(title: str, points: Sequence[tuple[str, float | None]], unit: str) -> Cell:
    """A small bar chart (SVG) of ``points`` (label, value); labels under the first,
    middle and last bars, the largest value on the axis."""
    width, height, pad = 540, 150, 44
    values = [v for _, v in points if v is not None]
    top = max(values) if values else 1.0
    top = top if top > 0 else 1.0
    step = (width - pad) / max(1, len(points))
    bars = []
    for i, (label, v) in enumerate(points):
        h = 0 if v is None else (height - 2 * pad) * v / top
        x = pad + i * step
        y = height - pad - h
        tip = f"{label}: {'-' if v is None else f'{v:.2f}'} {unit}"
        bars.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, step - 2):.1f}" '
            f'height="{h:.1f}" fill="#2e90fa"><title>{esc(tip)}</title></rect>'
        )
    labels = []
    last = len(points) - 1
    for i in sorted({0, len(points) // 2, last}):
        if 0 <= i < len(points):
            x = pad + i * step + step / 2
            anchor = "start" if i == 0 and last else "end" if i == last and i else "middle"
            labels.append(
                f'<text x="{x:.1f}" y="{height - 8}" font-size="11" fill="#667085" '
                f'text-anchor="{anchor}">{esc(points[i][0])}</text>'
            )
    axis = (
        f'<text x="{pad - 4}" y="{pad + 4}" font-size="11" fill="#667085" text-anchor="end">'
        f"{top:.3g}</text>"
        f'<line x1="{pad}" y1="{height - pad}" x2="{width}" y2="{height - pad}" stroke="#d0d5dd"/>'
    )
    empty = (
        ""
        if values
        else (
            f'<text x="{width / 2}" y="{height / 2}" fill="#667085" text-anchor="middle">'
            "no requests in this window</text>"
        )
    )
    return (
        f'<div class="chart"><div class="t">{esc(title)} <span class="muted">({esc(unit)})</span>'
        f'</div><svg width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
        f"{axis}{''.join(bars)}{''.join(labels)}{empty}</svg></div>"
    )


def page(title: str, body: Cell, *, here: str, user: str | None, flash: Cell = "") -> str:
    nav = "".join(
        f'<a href="{href}" class="{"here" if href == here else ""}">{esc(label)}</a>'
        for href, label in NAV
    )
    who = (
        f'<span class="who">{esc(user)} · <label><input type="checkbox" id="auto"> auto-refresh'
        f'</label><a href="/console/logout">log out</a></span>'
        if user
        else ""
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · multistore console</title><style>{CSS}</style></head><body>"
        f'<header><span class="brand">multistore console</span><nav>{nav}</nav>{who}</header>'
        f"<main>{flash}<h1>{esc(title)}</h1>{body}</main><script>{JS}</script></body></html>"
    )
