"""The report in a real browser: headless Chromium loads it, runs its own check
script (every image decoded, nothing wider than the window) and screenshots it.

Needs Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from llmpo.report import PLOT_FILES, write_report
from test_report import build_run

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 2000
TIMEOUT_S = 120


def chromium(profile: Path, page: Path, *arguments: str) -> str:
    """Run headless Chromium on ``page``; return its standard output."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package 'chromium')")
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
        "--virtual-time-budget=10000", *arguments, page.resolve().as_uri(),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S,
        env={**os.environ, "HOME": str(profile)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def body_marks(dom: str) -> dict[str, str]:
    """The ``data-*`` attributes the page's script set on ``<body>``."""
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1)))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    return write_report(build_run(folder / "run.sqlite"), folder / "report")


def test_report_loads_every_image_and_fits_1280_pixels(report, tmp_path):
    dom = chromium(tmp_path / "profile", report, "--dump-dom")
    marks = body_marks(dom)
    assert marks["images"] == f"{len(PLOT_FILES)}/{len(PLOT_FILES)}"
    assert marks["fits-width"] == "yes"
    assert "Decision: <b>structured</b> is the best policy" in dom
    assert "If the run stops with a decision, the probability" in dom


def test_hostile_response_stays_text_in_the_browser(report, tmp_path):
    dom = chromium(tmp_path / "profile", report, "--dump-dom")
    assert "&lt;script&gt;window.hacked = 1&lt;/script&gt;" in dom
    assert "<script>window.hacked" not in dom
    assert len(re.findall(r"<script\b", dom)) == 1


def test_page_check_reports_a_missing_image_and_an_overflow(report, tmp_path):
    # The same page with one image that cannot load and one far too wide: the
    # page's own check must say so, or the test above proves nothing.
    broken = tmp_path / "broken"
    shutil.copytree(report.parent, broken)
    page = broken / report.name
    text = page.read_text(encoding="utf-8").replace(
        "</main>",
        f'<img src="missing.png" alt="">'
        f'<img src="{PLOT_FILES["wins"]}" width="3000" alt=""></main>',
    )
    page.write_text(text, encoding="utf-8")
    marks = body_marks(chromium(tmp_path / "profile", page, "--dump-dom"))
    total = len(PLOT_FILES) + 2
    assert marks["images"] == f"{total - 1}/{total}"
    assert marks["fits-width"] == "no"


def test_screenshot_is_a_styled_page_of_the_window_size(report, tmp_path):
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile", report, f"--screenshot={shot}")
    image = imread(shot)
    assert image.shape[:2] == (HEIGHT, WIDTH)
    pixels = (image[..., :3] * 255).round().astype(np.int16)
    colours = np.unique(pixels[::4, ::4].reshape(-1, 3), axis=0)
    assert colours.shape[0] > 100
    # The green stripe of a decided run: the inline style was applied.
    stripe = np.all(np.abs(pixels - np.array([26, 127, 55])) <= 3, axis=-1)
    assert stripe.sum() > 500
