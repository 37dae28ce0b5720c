#!/usr/bin/env python3
"""Open a report.html in headless Chromium, screenshot it, and check that every <img> loaded (naturalWidth > 0).

Usage: scripts/check_report.py RESULTS_DIR/report.html [--screenshot PATH] [--chromium BIN]

The check runs a copy of the page with a small script that writes each image's
naturalWidth into a data attribute on load; ``--dump-dom`` prints the resulting DOM, which
is parsed here. Exit status 0 when the page has at least one image and all loaded.
Install Chromium with ``apt-get install -y chromium`` (Debian) if it is missing.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

PROBE = """<script>
window.addEventListener('load', () => {
  for (const img of document.images) img.setAttribute('data-natural-width', String(img.naturalWidth));
  document.body.setAttribute('data-probe', 'done');
});
</script>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars"]


class ImageProbe(HTMLParser):
    """Collects (alt, data-natural-width) of every <img> and whether the probe ran."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str | None]] = []
        self.probe_ran = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append((a.get("alt") or "?", a.get("data-natural-width")))
        if tag == "body" and a.get("data-probe") == "done":
            self.probe_ran = True


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else ["chromium", "chromium-browser", "google-chrome", "chrome"]):
        path = shutil.which(name) if name else None
        if path:
            return path
    raise SystemExit("check_report: no Chromium found; install it (apt-get install -y chromium) or pass --chromium BIN")


def run(chromium: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--screenshot", type=Path, default=None, help="PNG path (default: next to the report)")
    ap.add_argument("--chromium", default=None)
    args = ap.parse_args(argv)
    report = args.report.resolve()
    if not report.exists():
        raise SystemExit(f"check_report: {report} does not exist; run `appo report RESULTS_DIR` first")
    chromium = find_chromium(args.chromium)
    shot = (args.screenshot or report.with_name("report_screenshot.png")).resolve()
    with tempfile.TemporaryDirectory(prefix="check_report_") as tmp:
        tmp_path = Path(tmp)
        probed = tmp_path / "probed.html"
        probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
        dom = run(chromium, ["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], tmp_path / "profile")
        if dom.returncode != 0:
            raise SystemExit(f"check_report: chromium --dump-dom failed ({dom.returncode}): {dom.stderr[-2000:]}")
        parser = ImageProbe()
        parser.feed(dom.stdout)
        snap = run(chromium, [f"--screenshot={shot}", "--window-size=1100,4200", report.as_uri()], tmp_path / "profile")
        if snap.returncode != 0 or not shot.exists():
            raise SystemExit(f"check_report: screenshot failed ({snap.returncode}): {snap.stderr[-2000:]}")
    if not parser.probe_ran:
        print("check_report: the load probe did not run (page did not finish loading)", file=sys.stderr)
        return 1
    broken = [alt for alt, width in parser.images if not width or int(width) <= 0]
    for alt, width in parser.images:
        print(f"img {alt:<12} naturalWidth={width}")
    print(f"screenshot: {shot}")
    if not parser.images:
        print("check_report: the report has no images", file=sys.stderr)
        return 1
    if broken:
        print(f"check_report: {len(broken)} image(s) failed to load: {broken}", file=sys.stderr)
        return 1
    print(f"all {len(parser.images)} images loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
