"""The HTML report in a real browser: headless Chromium renders report.html at 1300 px and 420 px.

Skipped when no Chromium is installed (`.ci/run` installs Debian's `chromium`). The report itself carries a
Content-Security-Policy without scripts, so the measurement runs on a copy of the page with the policy removed and a
small script that writes the widths (page and each table's scroll box) into the DOM, read back with --dump-dom.
Screenshots of both widths are kept in the test's folder (``SEGBENCH_SCREENSHOTS=DIR`` copies them there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_fixtures import CASES, make_run_dir

from segbench.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed (apt-get install chromium)"),
]

# Models with long names and a failed one: the widest leaderboard a realistic run produces.
MODELS = ("fcn", "unet", "unet_w40_d3", "unet_w8_d2", "fcn_w40_d3", "monai_basicunet")

PROBE = """<script>
const wraps = Array.from(document.querySelectorAll('.table-wrap'));
const root = document.documentElement;
document.body.setAttribute('data-probe', JSON.stringify({
  page: [root.scrollWidth, root.clientWidth],
  tables: wraps.map(w => [w.scrollWidth, w.clientWidth]),
}));
</script>"""


def _chromium(*args: str, width: int, height: int = 900) -> subprocess.CompletedProcess:
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
               "--no-first-run", "--mute-audio", f"--window-size={width},{height}", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def measure(page: Path, width: int) -> dict:
    """Widths of the page and of every table's scroll box at a window ``width`` px wide."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    probe = page.with_name(f"probe-{width}.html")
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = _chromium("--dump-dom", probe.as_uri(), width=width)
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match, f"no measurement from Chromium: {done.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&quot;", '"'))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    run = make_run_dir(root, models=MODELS, n_folds=2, cases=CASES[:8],
                       failed={("monai_basicunet", 1): ("timeout", "job exceeded its time limit of 6 s")})  # fmt: skip
    return write_report(run)


@pytest.mark.parametrize("width", [1300, 420])
def test_report_renders_without_horizontal_page_overflow(report, width, tmp_path):
    measured = measure(report, width)
    page_scroll, page_client = measured["page"]
    assert page_scroll <= page_client, f"the page scrolls sideways at {width} px: {measured}"
    leaderboard_scroll, leaderboard_client = measured["tables"][0]
    if width >= 1300:  # the leaderboard fits a 1300 px window without scrolling
        assert leaderboard_scroll <= leaderboard_client, f"leaderboard overflows at {width} px: {measured}"
    shot = tmp_path / f"report-{width}.png"
    _chromium(f"--screenshot={shot}", report.as_uri(), width=width, height=1400)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("SEGBENCH_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["SEGBENCH_SCREENSHOTS"]) / shot.name)
