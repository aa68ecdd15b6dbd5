"""`view.html`: the cells of one execution (or two, side by side) in one self-contained page.

The page holds its data as JSON in inert `<script type="application/json">` blocks: the cards (axes,
status, checks, timings, answers) parsed at load, and one block per cell (prompt, ranked stages, reused
chunks) parsed when that cell is opened, beside one of the chunk texts the cells share. Its script and styles (runner/report/static/) are
inlined, and it builds the grid in the browser a screenful at a time, so a page of 1,000 cells opens from
`file://` with no network and filters without a reload. The address's `#fragment` holds the filters
(`view.html#template=brief_opinion&status=crashed`), which is how report.html links a table row to the
cells behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runner.report.tables import TOKENS
from runner.tracking import CHECK_FAIL, Status

VIEW_FILE = "view.html"
SCRIPTS = ("viewer.js", "cell.js", "compare.js")
"""The page's script, in the order they run (viewer.js draws the page once the others have added to it)."""
STYLE = "viewer.css"
FORMAT = 1
"""Version of the embedded data's shape (the page's script reads this one)."""


def viewer_link(filters: Mapping[str, str], page: str = VIEW_FILE) -> str:
    """The address of the page filtered on `filters` (axis, `check`, `status`, `tokens`, `q`: see viewer.js)."""
    return page + "#" + "&".join(f"{quote(k)}={quote(str(v), safe='')}" for k, v in filters.items())


Link = Callable[[str], "dict[str, str] | None"]
"""A report table row's value -> the viewer filters that show the cells behind it (None: no link)."""


def axis_link(axis: str) -> Link:
    """Rows of an axis (or of the prompt-token bins, labelled `lo–hi`) -> that value's cells."""
    if axis == TOKENS:
        return lambda v: None if v == "unknown" else {"tokens": v.replace("–", "-")}
    return lambda v: {axis: v}


def check_link(axis: str | None = None) -> Link:
    """Rows of a check (`name`, or `name · value` of `axis`) -> the cells that failed it."""

    def link(v: str) -> dict[str, str]:
        name, _, value = v.partition(" · ")
        return {"check": f"{name}:{CHECK_FAIL}", **({axis: value} if axis and value else {})}

    return link


def crashed_link(group: str) -> dict[str, str]:
    """A row of the crash-causes table (`all`, or a template) -> its crashed cells."""
    return {"status": Status.CRASHED, **({} if group == "all" else {"template": group})}


def _static(name: str) -> str:
    return resources.files("runner.report").joinpath("static").joinpath(name).read_text(encoding="utf-8")


def _embed(obj: Any) -> str:
    """JSON that cannot end its <script> block early (`</script>`, `<!--`) whatever the answers hold."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def page_data(views: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """The cards and headers, parsed when the page loads."""
    return {
        "format": FORMAT,
        "title": title,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "executions": [{k: v for k, v in view.items() if k != "details"} for view in views],
    }


def detail_id(execution: int, cell_id: str) -> str:
    """The id of the <script> block holding one cell's details (viewer.js finds it by this id)."""
    return f"pov-d-{execution}-{cell_id}"


def render_view(views: list[dict[str, Any]], chunks: dict[str, str], title: str) -> str:
    import html

    parts = [
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
        f'<script type="application/json" id="pov-data">{_embed(page_data(views, title))}</script>',
        f'<script type="application/json" id="pov-chunks">{_embed(chunks)}</script>',
    ]
    # One block per cell, parsed only when the cell is opened: a 1,000-cell page need not parse every
    # prompt and ranking to show its grid, nor all of them to open one cell.
    for i, view in enumerate(views):
        for cell_id, detail in view.get("details", {}).items():
            block = html.escape(detail_id(i, cell_id), quote=True)
            parts.append(f'<script type="application/json" id="{block}">{_embed(detail)}</script>')
    parts += [f"<script>{_static(name)}</script>" for name in SCRIPTS]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def write_view(views: list[dict[str, Any]], chunks: dict[str, str], out: Path, title: str) -> Path:
    """`out/view.html`, written whole (a reader never sees half a page)."""
    out.mkdir(parents=True, exist_ok=True)
    page = out / VIEW_FILE
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(render_view(views, chunks, title), encoding="utf-8")
    tmp.replace(page)
    return page
