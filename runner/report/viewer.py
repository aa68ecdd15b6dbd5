"""`view.html`: the cells of one execution (or two, side by side) in one self-contained page.

The page holds its data as JSON in two inert `<script type="application/json">` blocks: the cards (axes,
status, checks, timings, answers) parsed at load, and the details of each cell (prompt, ranked stages,
reused chunks) parsed the first time a cell is opened. Its script and styles (runner/report/static/) are
inlined, and it builds the grid in the browser a screenful at a time, so a page of 1,000 cells opens from
`file://` with no network and filters without a reload. The address's `#fragment` holds the filters
(`view.html#template=brief_opinion&status=crashed`), which is how report.html links a table row to the
cells behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

VIEW_FILE = "view.html"
SCRIPT = "viewer.js"
STYLE = "viewer.css"
FORMAT = 1
"""Version of the embedded data's shape (the page's script reads this one)."""


def viewer_link(filters: Mapping[str, str], page: str = VIEW_FILE) -> str:
    """The address of the page filtered on `filters` (axis, `check`, `status`, `tokens`, `q`: see viewer.js)."""
    return page + "#" + "&".join(f"{quote(k)}={quote(str(v), safe='')}" for k, v in filters.items())


def _static(name: str) -> str:
    return resources.files("runner.report").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def _embed(obj: Any) -> str:
    """JSON that cannot end its <script> block early (`</script>`, `<!--`) whatever the answers hold."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def page_data(
    views: list[dict[str, Any]], chunks: dict[str, str], title: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the page embeds: (cards and headers, details), each one JSON block."""
    details = {"executions": [v.get("details", {}) for v in views], "chunks": chunks}
    index = {
        "format": FORMAT,
        "title": title,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "executions": [{k: v for k, v in view.items() if k != "details"} for view in views],
    }
    return index, details


def render_view(views: list[dict[str, Any]], chunks: dict[str, str], title: str) -> str:
    import html

    index, details = page_data(views, chunks, title)
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # No network at all: the page allows only what it carries inline (and images from data: URIs).
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">",
            f"<title>{html.escape(title)}</title>",
            f"<style>{_static(STYLE)}</style>",
            "</head><body>",
            '<div id="app"><p class="loading">Loading…</p></div>',
            f'<script type="application/json" id="pov-data">{_embed(index)}</script>',
            f'<script type="application/json" id="pov-details">{_embed(details)}</script>',
            f"<script>{_static(SCRIPT)}</script>",
            "</body></html>",
            "",
        ]
    )


def write_view(views: list[dict[str, Any]], chunks: dict[str, str], out: Path, title: str) -> Path:
    """`out/view.html`, written whole (a reader never sees half a page)."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / VIEW_FILE
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(render_view(views, chunks, title), encoding="utf-8")
    tmp.replace(page)
    return page
