"""``ctiir progressive``: stages chained through checkpoints, skipping, zero-epoch evaluation, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctiir.pipeline import progressive_main


def write_config(tmp_path: Path, root: Path, run_dir: Path, stage_one_epochs: int = 0, data_extra: str = "") -> Path:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"""
run_dir: {run_dir}
seed: 0
backbone: tiny
progress_bar: false
data:
  class_path: ctiir.datamodules.SyntheticDataModule
  init_args: {{root: {root}, size: tiny, batch_size: 16, max_val_queries: 6{data_extra}}}
trainer: {{accelerator: cpu, devices: 1, limit_train_batches: 2}}
stages:
  I: {{max_epochs: {stage_one_epochs}}}
  II: {{max_epochs: 1, model: {{tasks: [t2i, i2i]}}}}
  III: {{max_epochs: 1, model: {{fusion: adaptive}}}}
"""
    )
    return config


@pytest.mark.slow
def test_progressive_chains_the_stages_and_writes_the_run_folder(synth_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, synth_root, run_dir, data_extra=", breakdown: [scenario]")
    assert progressive_main(["--config", str(config)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    stages = results["stages"]
    for name in ("I", "II", "III"):
        assert Path(stages[name]["checkpoint"]).is_file(), name
        assert (run_dir / f"stage-{name}" / "config.yaml").is_file()
    assert stages["I"]["epochs"] == 0, "max_epochs: 0 evaluates the initial weights only (pretrained CLIP's case)"
    # Each stage started from the previous one's checkpoint.
    for before, after in (("I", "II"), ("II", "III")):
        hp = torch.load(stages[after]["checkpoint"], map_location="cpu", weights_only=False)["hyper_parameters"]
        assert hp["initialized_from"] == stages[before]["checkpoint"]
    assert stages["III"]["fusion"] == "adaptive" and stages["I"]["fusion"] == "fixed"
    iii = stages["III"]["metrics"]
    assert {"synthetic/dress/R@10", "synthetic/avg/R@50", "synthetic/score", "synthetic/avg/w_img"} <= set(iii)
    # the last stage draws its best- and worst-ranked test queries; the earlier ones draw none
    assert (run_dir / "stage-III" / "examples" / "test" / "synthetic-dress-worst.png").is_file()
    assert not (run_dir / "stage-II" / "examples").exists()
    table = (run_dir / "results.md").read_text()
    assert "dress R@10" in table and "w_img" in table and table.count("\n| I") + table.count("\n| II") >= 2
    # The datamodule's breakdown: logged, in results.json's structure, and a table in results.md.
    assert iii["synthetic/avg/scenario=edit/queries"] == 18.0  # max_val_queries: 6 per category
    groups = stages["III"]["evaluation"]["protocols"][-1]["breakdown_average"]
    assert groups["scenario"]["edit"]["R@10"] == pytest.approx(iii["synthetic/avg/R@10"])
    assert "| III (adaptive) | scenario=edit | 18 |" in table
    # A finished run is never overwritten.
    with pytest.raises(FileExistsError, match="already holds"):
        progressive_main(["--config", str(config)])


@pytest.mark.slow
def test_skipped_stages_start_stage_three_from_scratch(synth_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, synth_root, run_dir)
    assert progressive_main(["--config", str(config), "--skip=[I, II]"]) == 0
    stages = json.loads((run_dir / "results.json").read_text())["stages"]
    assert stages["I"] == {"skipped": True} and stages["II"] == {"skipped": True}
    hp = torch.load(stages["III"]["checkpoint"], map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["initialized_from"] is None


def test_unknown_stage_names_are_errors(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert progressive_main(["--config", str(write_config(tmp_path, synth_root, tmp_path / "r")), "--skip=[IV]"]) == 2
    assert "--skip: unknown stage(s) ['IV']" in capsys.readouterr().err


def test_a_run_config_that_is_not_a_json_object_is_a_clear_error(tmp_path: Path) -> None:
    from ctiir.pipeline import RUN_CONFIG, PipelineError, _claim_run_dir

    (tmp_path / RUN_CONFIG).write_text("[1, 2]\n")
    with pytest.raises(PipelineError, match=rf"{RUN_CONFIG} is unreadable \(it holds a JSON list, not an object\)"):
        _claim_run_dir(tmp_path, {"seed": 0}, overwrite=False)
    assert (tmp_path / RUN_CONFIG).read_text() == "[1, 2]\n"
