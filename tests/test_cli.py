"""The ``ctiir`` console script: LightningCLI subcommands and ctiir's own, and one-line fusion swaps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctiir.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "synth", "progressive", "check-data", "cirr-submission"):
        assert command in out


def test_unknown_command_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["fixed", "gated", "adaptive"])
def test_fusion_swaps_in_one_cli_flag(capsys: pytest.CaptureFixture[str], name: str) -> None:
    config = printed_config(capsys, "-c", str(CONFIGS / "stage3.yaml"), f"--model.fusion={name}")
    assert config["model"]["init_args"]["fusion"] == name


def test_fusion_swaps_by_class_path_in_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    override = tmp_path / "fusion.yaml"
    override.write_text(
        "model:\n  init_args:\n    fusion:\n      class_path: ctiir.fusion.AdaptiveWeighting\n      init_args: {mode: rank}\n"
    )
    config = printed_config(capsys, "-c", str(CONFIGS / "stage3.yaml"), "-c", str(override))
    fusion = config["model"]["init_args"]["fusion"]
    assert fusion["class_path"] == "ctiir.fusion.AdaptiveWeighting" and fusion["init_args"]["mode"] == "rank"


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3", "fashioniq", "shoes", "cirr"])
def test_every_example_config_parses(capsys: pytest.CaptureFixture[str], stage: str) -> None:
    args = ["-c", str(CONFIGS / f"{stage}.yaml")]
    if stage in ("fashioniq", "shoes", "cirr"):
        args += ["--data.root", "/data/somewhere"]
    config = printed_config(capsys, *args)
    assert config["model"]["class_path"].startswith("ctiir.stages.")


def test_fit_runs_a_stage_from_yaml_with_a_class_path_fusion(tmp_path: Path) -> None:
    from ctiir.datamodules.synthetic import generate

    root = generate(tmp_path / "synth", seed=0, size="tiny")
    code = main(
        [
            "fit", "-c", str(CONFIGS / "stage3.yaml"),
            f"--data.root={root}", "--data.size=tiny", "--data.batch_size=8", "--data.num_workers=0",
            "--model.fusion=gated", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--data.max_val_queries=8",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false",
        ]
    )
    assert code == 0
    ckpts = list((tmp_path / "run").rglob("*.ckpt"))
    assert ckpts, "ModelCheckpoint(monitor=val/score) saved nothing: the retrieval callback did not log val/score"
    from ctiir.fusion import Gated
    from ctiir.stages import ComposedRetrieval

    assert isinstance(ComposedRetrieval.load_from_checkpoint(ckpts[0]).fusion, Gated)


def test_synth_subcommand_writes_the_benchmark(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--seed", "3", "--size", "tiny", "--quiet"]) == 0
    assert (tmp_path / "s" / "captions" / "cap.dress.train.json").is_file()
