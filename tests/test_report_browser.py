"""report.html in headless Chromium: every chart loads from the report's own folder, and the page renders."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from headless import CHROMIUM_ARGS
from test_report import demo_spec, log_execution

from runner.cli import main as cli

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
)

# Marks, once the page has loaded, how many images it has and how many decoded to a real size.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-loaded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);
});
</script>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(CHROMIUM),
        "--headless",
        *CHROMIUM_ARGS,
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run = log_execution(uri, demo_spec(), 1, {"summary_opinion": 0.5, "opinion_only": 0.1}, questions=("q1",))
    out = root / "report"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        assert cli(["report", "--run", run, "--out", str(out), "--no-log"]) == 0
    finally:
        mp.undo()
    return out


def loaded_images(folder: Path, profile: Path) -> tuple[int, int]:
    page = (folder / "report.html").read_text(encoding="utf-8")
    probe = folder / "probe.html"  # same folder, so the relative <img src> resolve as in report.html
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = chromium(profile, "--dump-dom", probe.as_uri())
    body = re.search(r'<body data-images="(\d+)" data-loaded="(\d+)"', result.stdout)
    assert body, f"probe did not run: {result.stderr[-2000:]}"
    return int(body.group(1)), int(body.group(2))


def test_every_image_loads(report: Path, tmp_path: Path):
    images, loaded = loaded_images(report, tmp_path / "profile")
    assert images >= 8
    assert loaded == images


def test_a_missing_png_is_noticed(report: Path, tmp_path: Path):
    # The probe can fail: with one chart gone, one image fails to load.
    copy = tmp_path / "copy"
    shutil.copytree(report, copy)
    (copy / "crash_template.png").unlink()
    images, loaded = loaded_images(copy, tmp_path / "profile")
    assert loaded == images - 1


def test_screenshot_is_not_blank(report: Path, tmp_path: Path):
    import numpy as np
    from PIL import Image

    shot = tmp_path / "shot.png"
    result = chromium(
        tmp_path / "profile",
        "--window-size=1280,2000",
        f"--screenshot={shot}",
        (report / "report.html").as_uri(),
    )
    assert shot.exists(), result.stderr[-2000:]
    pixels: Any = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    non_white = (pixels < 240).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert non_white > 0.03 and colours > 50  # text, tables and charts, not an empty page
    # The charts' bar colour is on the page: the images were drawn, not just their frames.
    assert (np.abs(pixels.astype(int) - [0x3B, 0x6E, 0xA8]).sum(axis=2) < 30).sum() > 500
