"""the fleet page of `pihace watch --listen`: `/` (HTML for a browser: every device worst first,
filtered, grouped, kept live by /static/page.js polling /page/fleet.json once a second; the
table is rendered on the server too, so it works without JavaScript), `/devices/<id>` (HTML,
or JSON for Accept: application/json, with its uptime over 24 h and 7 d drawn in inline SVG)
and the two same-origin static files. Strict Content-Security-Policy: no inline script or
style, no other origin; every text from a report is escaped here, and set with textContent
there."""

from __future__ import annotations

import time

from .header import __version__
from .devices import DEVICE_STATES, _TRANSITIONS_KEPT
from .server import _TEXT_PLAIN, _quality

_HTML = "text/html; charset=utf-8"
_JSON = "application/json"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_PAGE_HEADERS = [("Content-Security-Policy", _CSP), ("Referrer-Policy", "no-referrer"),
                 ("X-Frame-Options", "DENY"), ("Vary", "Accept")]
_PAGE_ROWS = 100  # rows of the server-rendered table (the script shows them all, windowed)
_WINDOWS = (("24 h", 86400.0), ("7 d", 7 * 86400.0))


def _escape(text):
    import html  # here, not at the top: only the pages need it

    return html.escape(str(text), quote=True)


def _quote(text):
    from urllib.parse import quote  # loaded already, by http.server

    return quote(str(text), safe="")


def _when(seconds):
    """A wall-clock time, UTC, for a title."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds)) if seconds else "never"


def _span(seconds):
    """A duration as people say it: 4s, 3m, 5h, 2d."""
    seconds = max(0, int(seconds))
    return (f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else
            f"{seconds // 3600}h" if seconds < 172800 else f"{seconds // 86400}d")


def _state_class(state):
    """The CSS class of a state: its own colour for the known ones, a neutral one else."""
    return f"s-{state}" if state in DEVICE_STATES else "s-other"


def _counts(rows):
    counts = dict.fromkeys(DEVICE_STATES, 0)
    for device in rows:
        counts[device["state"]] = counts.get(device["state"], 0) + 1
    return counts


def _now(rows):
    """The watcher's clock at its reading: a device's last seen plus its age."""
    return rows[0]["last_seen"] + rows[0]["age"] if rows else time.time()


def _watcher_text(status, now):
    """(CSS class, what the watcher says of itself), e.g. connected since 12:00:00Z, leader."""
    if status is None:
        return "ok", "watcher"
    role = "" if status.get("standby_group") is None else (
        f" · {'leader' if status['leader'] else 'standby'} of {status['standby_group']}")
    since = status["since"]
    if status["connected"]:
        return "ok", f"watcher connected{f' since {_when(since)}' if since else ''}{role}"
    return "bad", (f"watcher NOT connected since {_when(since)} ({_span(now - since) if since else '?'}"
                   f"): {status['reason'] or 'unknown reason'} — states shown are as last seen"
                   f"{role}")


def _matches(device, text, state):
    if state and not (device["state"] != "up" if state == "!up" else device["state"] == state):
        return False
    if not text:
        return True
    haystack = " ".join([device["device"], device["name"] or "", device["host"] or "",
                         *device["failing"], *device.get("tags", ())]).lower()
    return all(word in haystack for word in text.lower().split())


# -- answers -------------------------------------------------------------------------

def _page_answer(pages, path, query, accept):
    """The answer of a page route of `pages` (a _FleetPages), or None for another route."""
    if path == "/" and _wants_html(accept):
        return _fleet_html(pages, query)
    if path == "/page/fleet.json":
        return _fleet_json(pages, query)
    if path.startswith("/devices/"):
        return _device_answer(pages, path[len("/devices/"):], accept)
    if path in _STATIC:
        content_type, body = _STATIC[path]
        return 200, content_type, body.encode(), [("Content-Security-Policy", _CSP)]
    return None


def _wants_html(accept):
    """Does the request prefer HTML to JSON? (A browser does; curl and scripts, */*, do not.)"""
    html_q, json_q = _quality(accept, "text/html"), _quality(accept, _JSON)
    return html_q[0] == 2 and html_q[1] > 0 and html_q[1] >= json_q[1] * (json_q[0] == 2)


def _fleet_html(pages, query):
    from urllib.parse import parse_qs  # loaded already, by http.server

    fields = parse_qs(query)
    text = fields.get("q", [""])[0][:200]
    state = fields.get("state", [""])[0][:20]
    group = fields.get("group", [""])[0][:10]
    try:
        offset = max(0, int(fields.get("offset", ["0"])[0]))
    except ValueError:
        offset = 0
    if not (text or state or group or offset):  # the usual request: rendered once a second
        return 200, _HTML, pages._cached("page", lambda: _render_fleet(
            *pages._view(), "", "", "", 0)), _PAGE_HEADERS
    return 200, _HTML, _render_fleet(*pages._view(), text, state, group, offset), _PAGE_HEADERS


def _fleet_json(pages, query):
    """The fleet for the script, compact: one array per device (see _FIELDS), worst first;
    {"same": true} without the devices when nothing but the clock changed since version ?v=."""
    document, devices, version = pages._cached("page-json", lambda: _fleet_document(
        *pages._view()))
    import json  # here, not at the top: slow to import (see the imports)

    if query == f"v={version}":
        return 200, _JSON, json.dumps(dict(document, same=True)).encode(), []
    return 200, _JSON, json.dumps(document).encode()[:-1] + b', "devices": ' + devices + b"}", []


_FIELDS = ("device", "name", "host", "state", "since", "last_seen", "interval", "rate",
           "failing", "stale", "tags")


def _fleet_document(devices, status, rows):
    import hashlib  # here, not at the top: only the page needs it
    import json  # likewise: slow to import (see the imports)

    body = json.dumps([[device.get(field) for field in _FIELDS] for device in rows]).encode()
    version = hashlib.blake2b(body, digest_size=8).hexdigest()
    return ({"v": version, "now": _now(rows), "fields": _FIELDS, "states": DEVICE_STATES,
             "counts": _counts(rows), "total": len(rows), "watcher": status}, body, version)


def _device_answer(pages, quoted, accept):
    from urllib.parse import unquote  # loaded already, by http.server

    key = unquote(quoted)
    device, status = pages.watcher.device(key), pages.watcher.status
    html = _wants_html(accept)
    if device is None:
        if html:
            return 404, _HTML, _document("no such device", "device", (
                f"<main><h1>No device {_escape(key)}</h1><p>The watcher knows no device by "
                f"this id. <a href=\"/\">Back to the fleet</a></p></main>")), _PAGE_HEADERS
        return 404, _TEXT_PLAIN, b"not found: no such device (see /devices)\n", []
    now = device["last_seen"] + device["age"]
    uptime = {label: _uptime(device, now, window) for label, window in _WINDOWS}
    if html:
        return 200, _HTML, _render_device(device, status, now, uptime), _PAGE_HEADERS
    import json  # here, not at the top: slow to import (see the imports)

    return 200, _JSON, json.dumps({"device": device, "watcher": status, "now": now,
                                   "version": _device_version(device), "uptime": uptime},
                                  indent=1).encode(), [("Vary", "Accept")]


# -- uptime ----------------------------------------------------------------------------

def _uptime(device, now, window):
    """A device's time in each state over the last `window` seconds, from what the watcher
    remembers: its transitions (the last _TRANSITIONS_KEPT) and first_seen. {"window",
    "covered" (seconds of the window the history reaches), "up" (fraction of the covered
    time in state up, or None), "segments": [[start, end, state], ...]}."""
    transitions = device["transitions"]
    complete = len(transitions) < _TRANSITIONS_KEPT  # none was forgotten
    start = device["first_seen"] if complete or not transitions else transitions[0][0]
    state = (transitions[0][1] or transitions[0][2]) if transitions else device["state"]
    segments, at = [], start
    for when, _, new in transitions:
        if when > at:
            segments.append([at, when, state])
            at = when
        state = new
    segments.append([at, max(at, now), state])
    begin = now - window
    clipped = [[max(a, begin), b, s] for a, b, s in segments if b > begin and b > a]
    covered = sum(b - a for a, b, _ in clipped)
    up = sum(b - a for a, b, s in clipped if s == "up")
    return {"window": window, "covered": covered, "up": up / covered if covered else None,
            "segments": clipped}


def _strip_svg(uptime, now):
    """The uptime strip: one rectangle per state's stretch, the time not covered hatched."""
    window = uptime["window"]
    begin = now - window
    parts = []
    covered_from = min([a for a, _, _ in uptime["segments"]], default=now)
    if covered_from > begin:
        parts.append(f'<rect class="nodata" x="0" y="0" '
                     f'width="{(covered_from - begin) / window * 1000:.2f}" height="20"/>')
    for start, end, state in uptime["segments"]:
        x, width = (start - begin) / window * 1000, max(0.5, (end - start) / window * 1000)
        parts.append(f'<rect class="{_state_class(state)}" x="{x:.2f}" y="0" '
                     f'width="{width:.2f}" height="20"><title>{_escape(state)} from '
                     f'{_when(start)} to {_when(end)}</title></rect>')
    return ('<svg class="strip" viewBox="0 0 1000 20" preserveAspectRatio="none" role="img" '
            f'aria-label="states over the window">{"".join(parts)}</svg>')


def _uptime_text(label, uptime):
    up = "no data" if uptime["up"] is None else f"{uptime['up'] * 100:.2f}% up"
    short = uptime["covered"] < uptime["window"] - 1
    note = (f" (history covers only the last {_span(uptime['covered'])} of {label})"
            if short else "")
    return f"{label}: {up}{note}"


# -- HTML --------------------------------------------------------------------------------

def _document(title, page, body, refresh=None, data=""):
    meta = f'<noscript><meta http-equiv="refresh" content="{refresh}"></noscript>' \
        if refresh else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_escape(title)}</title><link rel="stylesheet" href="/static/page.css">'
            f'<link rel="icon" href="data:,">'
            f'<script src="/static/page.js" defer></script>{meta}</head>'
            f'<body data-page="{page}"{data}>{body}'
            f'<footer>pihace {_escape(__version__)} · <a href="/">fleet</a> · '
            f'<a href="/devices">JSON</a> · <a href="/metrics">metrics</a></footer>'
            f'</body></html>\n').encode()


def _pill(state):
    return f'<span class="pill {_state_class(state)}">{_escape(state)}</span>'


_COLUMNS = (("c-state", "state"), ("c-name", "device"), ("c-host", "host"),
            ("c-seen", "last seen"), ("c-age", "age / interval"), ("c-rate", "rate"),
            ("c-failing", "failing checks"), ("c-since", "in state for"))


def _row_html(device, now):
    name = device["name"] or device["device"]
    stale = ' title="the watcher cannot see: as last seen"' if device["stale"] else ""
    return (f'<tr class="{_state_class(device["state"])}{" stale" if device["stale"] else ""}"'
            f'{stale}><td class="c-state">{_pill(device["state"])}</td>'
            f'<td class="c-name"><a href="/devices/{_escape(_quote(device["device"]))}" '
            f'title="{_escape(device["device"])}">{_escape(name)}</a></td>'
            f'<td class="c-host">{_escape(device["host"] or "")}</td>'
            f'<td class="c-seen" title="{_when(device["last_seen"])}">'
            f'{_span(device["age"])} ago</td>'
            f'<td class="c-age">{_span(device["age"])} / {_span(device["interval"] or 0)}</td>'
            f'<td class="c-rate">{_escape(device["rate"] or "–")}</td>'
            f'<td class="c-failing">{_escape(", ".join(device["failing"]))}</td>'
            f'<td class="c-since" title="since {_when(device["since"])}">'
            f'{_span(now - device["since"]) if device["since"] else ""}</td></tr>')


def _header_html(rows, status, now):
    counts = _counts(rows)
    items = "".join(f'<li class="count {_state_class(state)}" data-state="{_escape(state)}">'
                    f'<a href="/?state={_escape(_quote(state))}"><b>{n}</b> '
                    f'{_escape(state)}</a></li>' for state, n in counts.items())
    kind, said = _watcher_text(status, now)
    return (f'<header class="top"><h1>pihace fleet</h1><ul id="counts" class="counts">'
            f'<li class="count total"><a href="/"><b id="total">{len(rows)}</b> devices</a></li>'
            f'{items}</ul><p id="watcher" class="watcher {kind}">{_escape(said)}</p>'
            f'<p id="conn" class="conn" hidden></p></header>')


def _filters_html(text, state, group):
    options = "".join(f'<option value="{value}"{" selected" if value == state else ""}>'
                      f'{label}</option>' for value, label in (
                          ("", "all states"), ("!up", "not up"),
                          *((s, s) for s in DEVICE_STATES)))
    groups = "".join(f'<option value="{value}"{" selected" if value == group else ""}>'
                     f'{label}</option>' for value, label in (
                         ("", "no grouping"), ("host", "group by host"),
                         ("tag", "group by tag")))
    return (f'<form id="filters" class="filters" method="get" action="/" role="search">'
            f'<input id="q" type="search" name="q" value="{_escape(text)}" '
            f'placeholder="filter: device, host, failing check" aria-label="filter">'
            f'<select id="state" name="state" aria-label="state">{options}</select>'
            f'<select id="group" name="group" aria-label="grouping">{groups}</select>'
            f'<button class="nojs" type="submit">filter</button></form>')


def _render_fleet(devices, status, rows, text, state, group, offset):
    now = _now(rows)
    shown = [device for device in rows if _matches(device, text, state)]
    if group:
        key = (lambda d: d["host"] or "") if group == "host" else (
            lambda d: ", ".join(d.get("tags") or ()) or "(no tag)")
        order = {}
        for device in shown:
            order.setdefault(key(device), []).append(device)
        shown = [device for members in order.values() for device in members]
    page = shown[offset:offset + _PAGE_ROWS]
    body_rows, last_group = [], None
    for device in page:
        if group and key(device) != last_group:
            last_group = key(device)
            body_rows.append('<tr class="group">' + "".join(
                f'<td class="{css}">{_escape(last_group) if css == "c-name" else ""}</td>'
                for css, _ in _COLUMNS) + "</tr>")
        body_rows.append(_row_html(device, now))
    head = "".join(f'<th class="{css}" scope="col">{label}</th>' for css, label in _COLUMNS)
    link = f"q={_quote(text)}&amp;state={_quote(state)}&amp;group={_quote(group)}"
    more = [f'showing {offset + 1 if page else 0}–{offset + len(page)} of {len(shown)}']
    if offset:
        more.append(f'<a href="/?{link}&amp;offset={max(0, offset - _PAGE_ROWS)}">previous</a>')
    if offset + _PAGE_ROWS < len(shown):
        more.append(f'<a href="/?{link}&amp;offset={offset + _PAGE_ROWS}">next</a>')
    more.append(f'<a href="/?{link}&amp;offset={offset}">refresh</a>')
    counts = _counts(rows)
    title = "pihace fleet: " + (", ".join(f"{n} {s}" for s, n in counts.items() if n)
                                or "no devices")
    body = (f'{_header_html(rows, status, now)}<main>{_filters_html(text, state, group)}'
            f'<table id="fleet" class="fleet"><thead><tr>{head}'
            f'</tr></thead><tbody id="rows">{"".join(body_rows)}</tbody></table>'
            f'<p id="empty" class="empty"{"" if not rows else " hidden"}>No device has '
            f'reported yet.</p>'
            f'<p id="more" class="more">{" · ".join(more)}</p></main>')
    return _document(title, "fleet", body, refresh=10)


def _render_device(device, status, now, uptime):
    name = device["name"] or device["device"]
    kind, said = _watcher_text(status, now)
    facts = [("state", f'<span id="d-state">{_pill(device["state"])}</span>'
                       + (' <span class="stale-note">(stale: the watcher cannot see)</span>'
                          if device["stale"] else "")),
             ("device id", f'<code>{_escape(device["device"])}</code>'),
             ("host", _escape(device["host"] or "")),
             ("in this state since", f'<span id="d-since">{_when(device["since"])}</span>'),
             ("last seen", f'<span id="d-seen" title="{_when(device["last_seen"])}">'
                           f'{_span(device["age"])} ago</span> ({_when(device["last_seen"])})'),
             ("interval", f'{_span(device["interval"] or 0)}'),
             ("rate", f'<span id="d-rate">{_escape(device["rate"] or "–")}</span>'),
             ("reports", f'<span id="d-reports">{device["reports"]}</span>'),
             ("first seen", _when(device["first_seen"])),
             ("status", f'<span id="d-status">{_escape(device["status"] or "")}</span>')]
    failing = "".join(f"<li>{_escape(check)}</li>" for check in device["failing"])
    strips = "".join(f'<figure class="uptime"><figcaption>{_escape(_uptime_text(label, u))}'
                     f'</figcaption>{_strip_svg(u, now)}</figure>'
                     for label, u in uptime.items())
    transitions = "".join(f'<li><time>{_when(when)}</time> {_pill(old or "new")} → '
                          f'{_pill(new)}</li>' for when, old, new in
                          reversed(device["transitions"]))
    body = (f'<header class="top"><h1><a href="/">pihace fleet</a> › {_escape(name)}</h1>'
            f'<p id="watcher" class="watcher {kind}">{_escape(said)}</p>'
            f'<p id="conn" class="conn" hidden></p></header><main class="device">'
            f'<dl class="facts">{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)}</dl>'
            f'<h2>Failing checks</h2><ul id="d-failing" class="failing">'
            f'{failing or "<li class=none>none</li>"}</ul>'
            f'<h2>Uptime</h2>{strips}'
            f'<h2>Transitions (the last {_TRANSITIONS_KEPT} kept)</h2>'
            f'<ol class="transitions">{transitions or "<li class=none>none seen</li>"}</ol>'
            f'</main>')
    return _document(f"{name}: {device['state']}", "device", body, refresh=10,
                     data=f' data-device="{_escape(_quote(device["device"]))}"'
                          f' data-version="{_escape(_device_version(device))}"')


def _device_version(device):
    """What changes when the device page must be drawn again (not its age)."""
    return f"{device['state']}|{device['since']}|{len(device['transitions'])}|" \
           f"{device['transitions'][-1][0] if device['transitions'] else ''}|{device['stale']}"


# -- the static files --------------------------------------------------------------------

_CSS = """
:root{--bg:#f6f7f9;--fg:#1b1f24;--muted:#5c6670;--line:#d9dde2;--card:#fff;--link:#0b57d0;
--up:#1e7e34;--degraded:#b26a00;--late:#c05600;--down:#c62828;--silent:#6a1b9a;--other:#5c6670;
--missing:#ad1457;--paused:#1565c0;--stopped:#455a64;--row:30px;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#111418;--fg:#e6e8eb;--muted:#9aa4ae;
--line:#2a3038;--card:#181c21;--link:#8ab4f8;--up:#3fb950;--degraded:#d29922;--late:#f0883e;
--down:#f85149;--silent:#bc8cff;--other:#9aa4ae;--missing:#f778ba;--paused:#58a6ff;
--stopped:#8b949e}}
*{box-sizing:border-box}
html{background:var(--bg);color:var(--fg);font:15px/1.4 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif}
body{margin:0 auto;max-width:1600px;padding:0 16px 24px}
a{color:var(--link)}
h1{font-size:20px;margin:12px 0 8px}
h1 a{text-decoration:none}
h2{font-size:16px;margin:20px 0 8px}
.top{padding-top:4px}
.counts{display:flex;flex-wrap:wrap;gap:6px;list-style:none;margin:0 0 8px;padding:0}
.count a{display:inline-block;min-width:92px;padding:4px 10px;border-radius:6px;
border:1px solid var(--line);background:var(--card);color:var(--fg);text-decoration:none;
border-left:6px solid var(--c,var(--line));font-variant-numeric:tabular-nums}
.count b{display:inline-block;min-width:3.2ch;text-align:right}
.count.selected a{outline:2px solid var(--c,var(--link))}
.s-up{--c:var(--up)}.s-degraded{--c:var(--degraded)}.s-late{--c:var(--late)}
.s-down{--c:var(--down)}.s-silent{--c:var(--silent)}.s-other{--c:var(--other)}
.s-missing{--c:var(--missing)}.s-paused{--c:var(--paused)}.s-stopped{--c:var(--stopped)}
.watcher,.conn{margin:0 0 8px;padding:4px 10px;border-radius:6px;border:1px solid var(--line);
background:var(--card);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.watcher.ok::before{content:"● ";color:var(--up)}
.watcher.bad,.conn{border-color:var(--down);white-space:normal}
.watcher.bad::before,.conn::before{content:"▲ ";color:var(--down)}
.filters{display:flex;flex-wrap:wrap;gap:8px;margin:4px 0 8px}
.filters input,.filters select,.filters button{font:inherit;color:inherit;background:var(--card);
border:1px solid var(--line);border-radius:6px;padding:4px 8px;height:32px}
.filters input{flex:1 1 240px;min-width:0}
.js .nojs{display:none}
table.fleet{width:100%;border-collapse:collapse;table-layout:fixed;background:var(--card);
font-variant-numeric:tabular-nums}
.fleet th,.fleet td{height:var(--row);padding:0 8px;text-align:left;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis;border-bottom:1px solid var(--line)}
.fleet th{position:sticky;top:0;background:var(--card);font-weight:600;color:var(--muted);
font-size:13px;z-index:1;box-shadow:0 1px 0 var(--line)}
.fleet tbody tr{height:var(--row)}
.fleet tbody tr td:first-child{border-left:4px solid var(--c,transparent)}
.fleet tr.pad td{height:auto;padding:0;border:0}
.fleet tr.group td{font-weight:600;background:var(--bg);color:var(--muted)}
.fleet tr.stale{opacity:.6}
.fleet th.c-state{width:104px}.fleet th.c-name{width:24%}.fleet th.c-host{width:14%}
.fleet th.c-seen{width:96px}.fleet th.c-age{width:116px}.fleet th.c-rate{width:64px}
.fleet th.c-since{width:104px}
.pill{display:inline-block;min-width:76px;padding:0 6px;border-radius:10px;line-height:20px;
font-size:13px;text-align:center;color:#fff;background:var(--c);font-weight:600}
@media (prefers-color-scheme:dark){.pill{color:#111418}}
.c-failing{color:var(--down)}
.more,.empty{color:var(--muted);font-size:14px}
footer{margin-top:16px;color:var(--muted);font-size:13px}
.device .facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
.device dt{color:var(--muted)}.device dd{margin:0;overflow-wrap:anywhere}
.failing li{color:var(--down)}.failing li.none,.transitions li.none{color:var(--muted)}
.uptime{margin:0 0 12px}.uptime figcaption{font-size:14px;margin-bottom:4px}
svg.strip{display:block;width:100%;height:20px;border:1px solid var(--line);border-radius:4px;
background:var(--card)}
svg.strip rect{fill:var(--c)}
svg.strip rect.nodata{fill:var(--line)}
.transitions{padding-left:20px;font-variant-numeric:tabular-nums}
.transitions li{height:28px}
.transitions time{display:inline-block;min-width:190px}
@media (max-width:700px){body{padding:0 8px 16px}
.fleet .c-host,.fleet .c-age,.fleet .c-rate,.fleet .c-since{display:none}
.fleet th.c-state{width:84px}.fleet th.c-name{width:auto}.fleet th.c-seen{width:76px}
.fleet th.c-failing{width:28%}
.pill{min-width:60px}.count a{min-width:0}.watcher{white-space:normal}}
"""

_JS = r"""
"use strict";
(function () {
  var page = document.body.getAttribute("data-page");
  document.documentElement.classList.add("js");
  var KNOWN = ["silent", "missing", "down", "late", "degraded", "paused", "stopped", "up"];
  var offset = 0;  // the watcher's clock minus this browser's, in seconds

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function set(node, text) { if (node.textContent !== text) node.textContent = text; }
  function attr(node, name, value) {
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }
  function stateClass(state) {
    return KNOWN.indexOf(state) >= 0 ? "s-" + state : "s-other";
  }
  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    return seconds < 120 ? seconds + "s" : seconds < 7200 ? Math.floor(seconds / 60) + "m" :
      seconds < 172800 ? Math.floor(seconds / 3600) + "h" : Math.floor(seconds / 86400) + "d";
  }
  function when(seconds) {
    return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z"
      : "never";
  }
  function now() { return Date.now() / 1000 + offset; }
  function watcherText(status) {
    if (!status) return ["ok", "watcher"];
    var role = status.standby_group === null || status.standby_group === undefined ? "" :
      " \u00b7 " + (status.leader ? "leader" : "standby") + " of " + status.standby_group;
    if (status.connected)
      return ["ok", "watcher connected" + (status.since ? " since " + when(status.since) : "") + role];
    return ["bad", "watcher NOT connected since " + when(status.since) + " (" +
      (status.since ? span(now() - status.since) : "?") + "): " +
      (status.reason || "unknown reason") + " \u2014 states shown are as last seen" + role];
  }
  function showWatcher(status) {
    var said = watcherText(status), node = document.getElementById("watcher");
    attr(node, "class", "watcher " + said[0]);
    set(node, said[1]);
  }
  var lostSince = null;
  function connection(ok) {
    var node = document.getElementById("conn");
    if (!node) return;
    if (ok) { lostSince = null; node.hidden = true; return; }
    if (lostSince === null) lostSince = Date.now() / 1000;
    node.hidden = false;
    set(node, "This page has lost its connection to the watcher since " + when(lostSince) +
      " (" + span(Date.now() / 1000 - lostSince) + "): what it shows may be out of date. " +
      "Retrying every second.");
  }
  function poll(url, headers, use) {
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, 3000);
    fetch(url(), {cache: "no-store", headers: headers, signal: controller.signal})
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) { connection(true); use(data); },
            function () { connection(false); })
      .then(function () {
        clearTimeout(timer);
        setTimeout(function () { poll(url, headers, use); }, 1000);
      });
  }

  // -- the fleet ------------------------------------------------------------------
  function fleet() {
    var tbody = document.getElementById("rows"), table = document.getElementById("fleet");
    var q = document.getElementById("q"), stateSelect = document.getElementById("state");
    var groupSelect = document.getElementById("group"), more = document.getElementById("more");
    var empty = document.getElementById("empty");
    var devices = [], version = "", list = [], rowHeight = 30, pool = [];
    var padTop = el("tr", "pad"), padBottom = el("tr", "pad");
    padTop.appendChild(el("td"));  // one cell: a colspan would add columns the phone hides
    padBottom.appendChild(el("td"));
    var COLUMNS = ["c-state", "c-name", "c-host", "c-seen", "c-age", "c-rate", "c-failing",
                   "c-since"];

    function measure() {
      var sample = tbody.querySelector("tr:not(.pad)");
      if (sample && sample.offsetHeight) rowHeight = sample.offsetHeight;
    }
    function groupKey(device) {
      if (groupSelect.value === "host") return device.host || "";
      if (groupSelect.value === "tag")
        return device.tags && device.tags.length ? device.tags.join(", ") : "(no tag)";
      return null;
    }
    function matches(device, words, state) {
      if (state && !(state === "!up" ? device.state !== "up" : device.state === state))
        return false;
      if (!words.length) return true;
      var hay = device.haystack;
      for (var i = 0; i < words.length; i++) if (hay.indexOf(words[i]) < 0) return false;
      return true;
    }
    function build() {
      var words = q.value.toLowerCase().split(/\s+/).filter(Boolean), state = stateSelect.value;
      var shown = devices.filter(function (d) { return matches(d, words, state); });
      var grouping = groupSelect.value;
      list = [];
      if (!grouping) { list = shown; }
      else {
        var groups = new Map();
        shown.forEach(function (d) {
          var key = groupKey(d);
          if (!groups.has(key)) groups.set(key, []);
          groups.get(key).push(d);
        });
        groups.forEach(function (members, key) {
          list.push({group: key, count: members.length});
          Array.prototype.push.apply(list, members);
        });
      }
      var nDevices = shown.length;
      set(more, nDevices === devices.length ? devices.length + " devices" :
        nDevices + " of " + devices.length + " devices match");
      empty.hidden = devices.length > 0;
      document.querySelectorAll(".count").forEach(function (node) {
        var selected = node.getAttribute("data-state") === state ||
          (!state && node.classList.contains("total"));
        node.classList.toggle("selected", selected);
      });
    }
    function makeRow() {
      var tr = el("tr");
      COLUMNS.forEach(function (cls) { tr.appendChild(el("td", cls)); });
      var pill = el("span", "pill");
      tr.cells[0].appendChild(pill);
      tr.cells[1].appendChild(el("a"));
      return tr;
    }
    function fill(tr, item, t) {
      var cells = tr.cells;
      if (item.group !== undefined) {
        attr(tr, "class", "group");
        cells[0].textContent = "";
        set(cells[1], item.group === "" ? "(no host)" : item.group);
        set(cells[2], item.count + (item.count === 1 ? " device" : " devices"));
        for (var i = 3; i < 8; i++) set(cells[i], "");
        tr.removeAttribute("title");
        return;
      }
      if (!cells[0].firstChild) {
        cells[0].appendChild(el("span", "pill"));
      }
      attr(tr, "class", stateClass(item.state) + (item.stale ? " stale" : ""));
      var pill = cells[0].firstChild;
      attr(pill, "class", "pill " + stateClass(item.state));
      set(pill, item.state);
      var link = cells[1].firstChild;
      if (!link || link.nodeName !== "A") {
        cells[1].textContent = "";
        link = cells[1].appendChild(el("a"));
      }
      attr(link, "href", "/devices/" + encodeURIComponent(item.device));
      attr(link, "title", item.device);
      set(link, item.name || item.device);
      set(cells[2], item.host || "");
      var age = t - item.last_seen;
      set(cells[3], span(age) + " ago");
      attr(cells[3], "title", when(item.last_seen));
      set(cells[4], span(age) + " / " + span(item.interval || 0));
      set(cells[5], item.rate || "\u2013");
      set(cells[6], (item.failing || []).join(", "));
      set(cells[7], item.since ? span(t - item.since) : "");
      attr(cells[7], "title", "since " + when(item.since));
    }
    function draw() {
      var t = now();
      var top = tbody.getBoundingClientRect().top + window.scrollY;
      var first = Math.max(0, Math.floor((window.scrollY - top) / rowHeight) - 15);
      var count = Math.ceil(window.innerHeight / rowHeight) + 30;
      first = Math.min(first, Math.max(0, list.length - count));
      var last = Math.min(list.length, first + count);
      while (pool.length < last - first) pool.push(makeRow());
      padTop.style.height = first * rowHeight + "px";
      padBottom.style.height = (list.length - last) * rowHeight + "px";
      padTop.hidden = first === 0;
      padBottom.hidden = last === list.length;
      for (var i = first; i < last; i++) fill(pool[i - first], list[i], t);
      // the rows in place: exactly the top pad, the pool's first rows, the bottom pad
      var wanted = [padTop].concat(pool.slice(0, last - first), [padBottom]);
      var node = tbody.firstChild;
      for (var k = 0; k < wanted.length; k++) {
        if (node !== wanted[k]) tbody.insertBefore(wanted[k], node);
        else node = node.nextSibling;
      }
      while (node) { var next = node.nextSibling; tbody.removeChild(node); node = next; }
      table.setAttribute("data-rows", String(list.length));
    }
    function counts(data) {
      set(document.getElementById("total"), String(data.total));
      var ul = document.getElementById("counts");
      Object.keys(data.counts).forEach(function (state) {
        var node = ul.querySelector('[data-state="' + CSS.escape(state) + '"]');
        if (!node) {  // a state this page was not rendered with
          node = el("li", "count " + stateClass(state));
          node.setAttribute("data-state", state);
          var link = el("a");
          link.href = "/?state=" + encodeURIComponent(state);
          link.appendChild(el("b"));
          link.appendChild(document.createTextNode(" " + state));
          node.appendChild(link);
          ul.appendChild(node);
          var option = el("option", "", state);
          option.value = state;
          stateSelect.appendChild(option);
        }
        set(node.querySelector("b"), String(data.counts[state]));
      });
      var title = Object.keys(data.counts).filter(function (s) { return data.counts[s]; })
        .map(function (s) { return data.counts[s] + " " + s; }).join(", ");
      document.title = "pihace fleet: " + (title || "no devices");
    }
    function use(data) {
      offset = data.now - Date.now() / 1000;
      showWatcher(data.watcher);
      counts(data);
      if (!data.same) {
        version = data.v;
        var fields = data.fields;
        devices = data.devices.map(function (row) {
          var d = {};
          for (var i = 0; i < fields.length; i++) d[fields[i]] = row[i];
          d.haystack = [d.device, d.name || "", d.host || ""].concat(d.failing || [],
            d.tags || []).join(" ").toLowerCase();
          return d;
        });
        var tagged = devices.some(function (d) { return d.tags && d.tags.length; });
        groupSelect.querySelector('option[value="tag"]').hidden = !tagged;
        build();
      }
      draw();
      document.body.setAttribute("data-version", version);
    }
    function changed() {
      var params = new URLSearchParams();
      if (q.value) params.set("q", q.value);
      if (stateSelect.value) params.set("state", stateSelect.value);
      if (groupSelect.value) params.set("group", groupSelect.value);
      var search = params.toString();
      history.replaceState(null, "", search ? "?" + search : location.pathname);
      build();
      draw();
    }
    q.addEventListener("input", changed);
    stateSelect.addEventListener("change", changed);
    groupSelect.addEventListener("change", changed);
    document.getElementById("filters").addEventListener("submit", function (event) {
      event.preventDefault();
      changed();
    });
    document.getElementById("counts").addEventListener("click", function (event) {
      var item = event.target.closest(".count");
      if (!item) return;
      event.preventDefault();
      stateSelect.value = item.getAttribute("data-state") || "";
      changed();
    });
    var pending = false;
    window.addEventListener("scroll", function () {
      if (pending) return;
      pending = true;
      requestAnimationFrame(function () { pending = false; draw(); });
    }, {passive: true});
    window.addEventListener("resize", function () { measure(); draw(); });
    measure();
    if (!tbody.querySelector("tr")) {  // no device yet: measure a row drawn for it
      var probe = makeRow();
      tbody.appendChild(probe);
      if (probe.offsetHeight) rowHeight = probe.offsetHeight;
      tbody.removeChild(probe);
    }
    poll(function () { return "/page/fleet.json" + (version ? "?v=" + version : ""); }, {}, use);
  }

  // -- one device -----------------------------------------------------------------
  function device() {
    var id = document.body.getAttribute("data-device");
    var version = document.body.getAttribute("data-version");
    var url = function () { return "/devices/" + id; };
    poll(url, {"Accept": "application/json"}, function (data) {
      offset = data.now - Date.now() / 1000;
      showWatcher(data.watcher);
      var d = data.device;
      if (data.version !== version) { location.reload(); return; }  // a new state: drawn again whole
      var seen = document.getElementById("d-seen");
      set(seen, span(now() - d.last_seen) + " ago");
      set(document.getElementById("d-rate"), d.rate || "\u2013");
      set(document.getElementById("d-reports"), String(d.reports));
      set(document.getElementById("d-status"), d.status || "");
    });
  }

  if (page === "fleet") fleet();
  else if (page === "device") device();
})();
"""

_STATIC = {"/static/page.css": ("text/css; charset=utf-8", _CSS),
           "/static/page.js": ("text/javascript; charset=utf-8", _JS)}
