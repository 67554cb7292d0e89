"""The HTML leaderboard in a real browser: headless Chromium renders leaderboard.html at 1300 px and 420 px.

Skipped without Chromium (`.ci/run` installs Debian's `chromium`). The measurement is the run report's
(tests/test_report_browser.py): page width against the window, read back with --dump-dom from a copy of the page with
a probe script. Screenshots are kept in the test's folder (``SEGBENCH_SCREENSHOTS=DIR`` copies them there).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from leaderboard_fixtures import write_run
from test_report_browser import BROWSER, _chromium, measure

from segbench.leaderboard import write_leaderboard

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed (apt-get install chromium)"),
]

# Long model names, five datasets (the Friedman test runs without the caveat), one model missing from one dataset.
MODELS = ("fcn", "unet", "unet_w40_d3", "unet_w8_d2", "fcn_w40_d3", "monai_basicunet")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("board-browser")
    runs = []
    for d, name in enumerate(("SyntheticHeart", "SyntheticCTLesion", "SyntheticThin", "Task02_Heart", "Task04")):
        values = {m: 0.5 + 0.05 * ((i * (d + 1)) % 7) for i, m in enumerate(MODELS)}
        if d == 2:
            values.pop("monai_basicunet")
        runs.append(write_run(root, name, values))
    return write_leaderboard(runs, out_dir=root / "board", n_resamples=200, link_runs=False).html


@pytest.mark.parametrize("width", [1300, 420])
def test_leaderboard_renders_without_horizontal_page_overflow(page, width, tmp_path):
    measured = measure(page, width)
    page_scroll, page_client = measured["page"]
    assert page_scroll <= page_client, f"the page scrolls sideways at {width} px: {measured}"
    assert len(measured["tables"]) >= 10  # rankings, values, five datasets, stability, Nemenyi, comparability
    shot = tmp_path / f"leaderboard-{width}.png"
    _chromium(f"--screenshot={shot}", page.as_uri(), width=width, height=2400)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("SEGBENCH_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["SEGBENCH_SCREENSHOTS"]) / shot.name)
