"""The report stage: executions read back from MLflow, aggregated into tables (crash rate with Wilson
intervals per axis and per prompt-length bin, crash causes, latency, GPU memory, output checks), and written
as report.html with PNG charts and report.json.

    client = make_client(resolve_tracking_uri(), must_exist=True)      # from runner.tracking
    data = build([load_execution(client, run_id)])
    write_report(data, Path("report"), "title")

Modules: load (MLflow -> CellRow/Execution), tables (aggregation, and which axes are shown in which order),
retrieval (retrieval metrics by scoring method and POV set),
stats (Wilson intervals, percentiles, bins), charts (matplotlib PNGs), html (the page and write_report);
cells (each cell as `pov view` shows it) and viewer (view.html, its script and styles in static/).
"""

from runner.report.cells import load_views
from runner.report.html import fmt, write_report
from runner.report.load import CellRow, Execution, count_cells, latest_execution, load_execution
from runner.report.retrieval import COLUMNS as RETRIEVAL_COLUMNS
from runner.report.retrieval import retrieval_rows
from runner.report.tables import (
    CHART_AXES,
    DISPLAY_AXES,
    PERFORMANCE_AXES,
    TITLES,
    TOKENS,
    build,
    table_rows,
    values_in,
)
from runner.report.viewer import VIEW_FILE, viewer_link, write_view

__all__ = [
    "CHART_AXES",
    "DISPLAY_AXES",
    "PERFORMANCE_AXES",
    "RETRIEVAL_COLUMNS",
    "TITLES",
    "TOKENS",
    "VIEW_FILE",
    "CellRow",
    "Execution",
    "build",
    "count_cells",
    "fmt",
    "latest_execution",
    "load_execution",
    "load_views",
    "retrieval_rows",
    "table_rows",
    "values_in",
    "viewer_link",
    "write_report",
    "write_view",
]
