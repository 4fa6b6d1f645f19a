"""The example scripts that docs/results.md shows, run as a user runs them (small sizes, few steps), with
their outputs checked: the ablation's report, its resumption, and the scenario sanity table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_ablation_reports_every_variant_with_intervals_and_resumes(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from ablation import PAIRED, VARIANTS
    finally:
        sys.path.remove(str(EXAMPLES))
    out = tmp_path / "ablation"
    args = ("--out", str(out), "--size", "tiny", "--datasets", "mixed", "--seeds", "0,1", "--max-steps", "2", "--bootstrap", "200")
    first = run("ablation.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = 1 + 2 + len(VARIANTS)  # Stage I, two Stage II, every Stage III variant
    assert f"[ablation] {2 * runs} stage runs trained in this call" in first.stdout

    report = (out / "ablation.md").read_text()
    for v in VARIANTS:
        assert f"| {v.label} | 2 | " in report, v.label
    for a, b in PAIRED:
        assert f"| {a.replace('I-II-III-', '')} - {b.replace('I-II-III-', '')} | " in report
    assert "| edit (" in report and "| text-led (" in report and "| image-led (" in report
    assert "## Scenario sanity, mixed data" in report and "## Findings" in report
    assert (out / "w_img.png").stat().st_size > 10_000

    # Per query: every test query of the benchmark once, the same queries in every seed and variant.
    summary = json.loads((out / "ablation.json").read_text())["summary"]["mixed"]
    paper = summary["variants"]["III:I-II-III-adaptive"]
    assert paper["seeds"] == [0, 1] and paper["queries"] == 60  # tiny: 20 test queries in each of 3 categories
    estimate, low, high = paper["mean"]
    assert low <= estimate <= high
    assert sum(s["queries"] for s in paper["scenarios"].values()) == 60
    rows = json.loads((out / "mixed" / "seed-1" / "I-II" / "stage-II" / "per_query.json").read_text())
    assert len(rows) == 60 and {"rank_text", "rank_image", "rank_sum"} <= set(rows[0])

    again = run("ablation.py", *args)  # resumable: nothing is trained or evaluated twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[ablation] 0 stage runs trained in this call" in again.stdout
    assert (out / "ablation.md").read_text().split("\n", 3)[3] == report.split("\n", 3)[3]


@pytest.mark.slow
def test_scenario_sanity_writes_its_table_and_its_exit_status_says_whether_the_checks_hold(tmp_path: Path) -> None:
    out = tmp_path / "sanity"
    done = run("scenario_sanity.py", "--out", str(out), "--size", "tiny", "--threads", "1")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    table = (out / "scenario_sanity.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| edit", "| text-led", "| image-led"]
    assert sum(int(line.split(" | ")[1]) for line in lines[1:]) == 60
    failed = "FAILED:" in table
    assert failed == (done.returncode == 1) and (failed or "All three expectations hold." in table)
    assert len(json.loads((out / "stage-III" / "per_query.json").read_text())) == 60
