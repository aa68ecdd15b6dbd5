"""Make docs/viewer-grid.png and docs/viewer-cell.png: `pov view` of the full quickstart (the real SmolLM2, 16
cells), screenshotted in headless Chromium.

Runs the quickstart in a fresh copy of the project (its own MLflow store and Chroma under a temporary
folder; the model comes from the project's model cache), writes the page with `pov view`, and opens it
from file:// with the network off. A few minutes on two CPU cores.

    python docs/make_screenshots.py [--keep DIR [--no-run]]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from headless import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

POV = str(Path(sys.executable).parent / "pov")


def pov(project: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        POV_MODEL_CACHE=os.environ.get("POV_MODEL_CACHE", str(ROOT / ".pov" / "models")),
    )
    done = subprocess.run([POV, *args], cwd=project, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"pov {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def screenshots(page_path: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1100})
        context.set_offline(True)
        page = context.new_page()
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-ready]")
        page.screenshot(path=str(out / "viewer-grid.png"))
        # An opened cell: a finished summary + opinion answer, scrolled to its retrieval stages, with the
        # first reused chunk (if the answer reused one) opened to show what it copied.
        page.locator(".card.finished").first.click()
        panel = page.locator(".panel")
        panel.wait_for()
        reused = panel.locator("table.stage[data-stage=pov] tr.chunk.reused")
        (
            reused.first if reused.count() else panel.locator("table.stage[data-stage=pov] tr.chunk").first
        ).click()
        page.set_viewport_size({"width": 1440, "height": 1800})
        panel.evaluate("p => { p.scrollTop = 0; }")  # opening the chunk scrolled it; show the cell's header
        panel.screenshot(path=str(out / "viewer-cell.png"))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run the quickstart in this folder and keep it")
    parser.add_argument("--no-run", action="store_true", help="with --keep: use the run already in it")
    args = parser.parse_args()
    project = args.keep or Path(tempfile.mkdtemp(prefix="pov-screenshots-"))
    try:
        for sub in ("experiments", "templates", "data/brics"):
            if not (project / sub).exists():
                shutil.copytree(ROOT / sub, project / sub)
        (project / "pyproject.toml").write_text("# screenshot project root\n")
        if not (args.keep and args.no_run):
            pov(project, "run", "experiments/quickstart.yaml", "--quiet")
        page = Path(
            pov(project, "view", "experiments/quickstart.yaml", "--out", str(project / "page")).strip()
        )
        screenshots(page, ROOT / "docs")
        print(f"wrote {ROOT / 'docs' / 'viewer-grid.png'} and {ROOT / 'docs' / 'viewer-cell.png'}")
    finally:
        if args.keep is None:
            shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
