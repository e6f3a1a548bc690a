"""The report as a person sees it: opened in headless Chromium, figures loaded, the table sorts."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cellae.report import write_report
from cellae.training import train
from tiny import tiny_config

SCREENSHOT_DIR = Path(__file__).resolve().parent.parent / "runs" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]

# appended to a copy of the page: records what loaded and what a click on a column title did
PROBE = """
<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var table = document.getElementById('runs');
  var titles = Array.prototype.map.call(table.tHead.rows[0].cells, function (c) { return c.textContent; });
  var col = titles.indexOf('probe accuracy');
  function column() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return parseFloat(r.cells[col].getAttribute('data-value')); });
  }
  var header = table.tHead.rows[0].cells[col];
  header.click(); var ascending = column();
  header.click(); var descending = column();
  var out;
  function shown(id) {
    var e = document.getElementById(id);
    return !!e && (e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0));
  }
  var link = table.tBodies[0].rows[0].querySelector('a[href^="#"]');
  out = document.createElement('pre'); out.id = 'probe-result';
  out.textContent = JSON.stringify({images: images.length, loaded: loaded,
                                    ascending: ascending, descending: descending,
                                    settings: shown('settings'),
                                    curves: shown('learning_curves_all'),
                                    same_cells: shown('same_test_cells'),
                                    section: !!link && shown(link.getAttribute('href').slice(1))});
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium found (CI installs Debian's chromium; apt-get install chromium)")


def run_chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("report")
    for latent_dim in (3, 6):
        config = tiny_config(tmp_path, name=f"z{latent_dim}", model={"latent_dim": latent_dim},
                             train={"epochs": 2})
        train(config, tmp_path / "sweep", timestamped=False)
    return write_report([tmp_path / "sweep"], tmp_path / "report.html")


def test_report_in_chromium_loads_figures_and_sorts(report, tmp_path):
    probed = report.with_name("probed.html")
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    result = run_chromium("--dump-dom", "--virtual-time-budget=5000", probed.as_uri(), tmp_path=tmp_path)
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page's checks did not run: {result.stderr[-2000:]}"
    found = json.loads(match.group(1))
    assert found["images"] >= 6 and found["loaded"] == found["images"]
    assert found["ascending"] == sorted(found["ascending"])
    assert found["descending"] == sorted(found["descending"], reverse=True)
    # what makes it a comparison: settings grouped, all curves on one plot, the same cells by
    # every run, and each table row leading to its run's section
    assert found["settings"] and found["curves"] and found["same_cells"] and found["section"], found

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "report.png"
    run_chromium(f"--screenshot={shot}", "--window-size=1400,1800", report.as_uri(), tmp_path=tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
