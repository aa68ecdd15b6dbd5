"""Debian's Chromium, as every browser test, benchmark and screenshot script starts it: headless work on a
machine with no route out, so each background connection Chromium would open (updates, sync, safe-browsing
lists) is turned off rather than left to be refused over and over."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
