"""What a user sees on the console: tailor's progress line and summary, not Ray's native log lines."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from helpers import DEMO_CONFIG

from pipelines.core.console import ProgressLine


def test_progress_line_off_a_terminal_prints_a_line_per_interval_and_one_at_the_end():
    out = io.StringIO()
    line = ProgressLine(total=1000, stream=out, every=3600)
    line.update(100, 90)  # the first update prints at once
    line.update(100, 90)  # within the interval: nothing
    line.close()
    printed = out.getvalue().splitlines()
    assert len(printed) == 2
    assert printed[0].startswith("rows 100/1,000 (10%)") and "ok 90.0%" in printed[0]
    assert printed[1].startswith("rows 200/1,000 (20%)") and "eta" in printed[1]
    # the first line has no pace to go by (start-up is not the pace of the rows): no ETA guessed from it
    assert printed[0].endswith("eta -")


def test_progress_line_eta_takes_the_pace_since_the_first_rows_not_the_start_up():
    out = io.StringIO()
    line = ProgressLine(total=1000, stream=out, every=0)
    line.started -= 300  # five minutes of start-up before the first rows
    line.first = None
    line.update(100, 100)
    line.first = (line.first[0] - 10, line.first[1])  # then 100 more rows in 10 s: 10 rows/s, 800 left
    line.update(100, 100)
    assert out.getvalue().splitlines()[-1].endswith("eta 1m20s")
    # a last update that was printed is not printed again at the end
    out = io.StringIO()
    line = ProgressLine(total=100, stream=out, every=0)
    line.update(100, 100)
    line.close()
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.slow
def test_annotate_console_is_tailors_and_names_the_setting_that_blocked_every_row_and_exits_3(demo_web, tmp_path):
    """The demo web on loopback without download.allow_networks: every fetchable row is refused by the
    private-address guard. The console shows the progress line, the summary and the setting to change;
    Ray's C++ lines (an actor pool is started for the CLIP stage) stay out of it."""
    _, web = demo_web
    command = [sys.executable, "-m", "pipelines.cli", "annotate", "--config", str(DEMO_CONFIG),
               "--input", str(web / "urls.parquet"), "--output", str(tmp_path / "run"),
               "--set", "download.allow_networks=[]"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]  # no row came through: a scheduler can tell
    assert "rows 400/400 (100%)" in done.stderr
    assert "ok 0.0%" in done.stderr
    for noise in ("core_worker", "Failed to kill", "Execution plan", "Token authentication"):
        assert noise not in done.stderr + done.stdout
    hint = [line for line in done.stdout.splitlines() if line.startswith("no row came through")]
    assert len(hint) == 1 and "blocked_address" in hint[0] and "download.allow_networks" in hint[0]
