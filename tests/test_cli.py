"""The ``ctiir`` console script: LightningCLI subcommands and ctiir's own, packaged configs by name, one-line
fusion swaps, short errors and quiet output."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctiir.cli import configure_logging, main
from ctiir.configs import packaged_configs, resolve_config_args, resolve_config_path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "ctiir" / "configs"


pytestmark = pytest.mark.usefixtures("restore_logging")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "synth", "progressive", "check-data", "cirr-submission"):
        assert command in out


def test_unknown_command_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_help_and_own_commands_do_not_import_lightning(tmp_path: Path) -> None:
    """`ctiir --help`, `ctiir synth --help` and `ctiir cirr-submission --help` answer without importing Lightning or
    torch (that import took 37-55 s on a loaded machine)."""
    script = (
        "import sys; from ctiir.cli import main; main(['--help']); main(['config'])\n"
        "for command in ('synth', 'cirr-submission'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
        "print('MODULES', 'lightning' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MODULES False False" in out.stdout


# ---------------------------------------------------------------------------------------------- packaged configs
def test_a_bare_name_resolves_to_the_packaged_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert set(packaged_configs()) >= {"synthetic", "stage1", "stage2", "stage3", "fashioniq", "shoes", "cirr"}
    assert resolve_config_path("stage3") == str(CONFIGS / "stage3.yaml")
    assert resolve_config_path("stage3.yaml") == str(CONFIGS / "stage3.yaml")
    (tmp_path / "stage3.yaml").write_text("seed_everything: 1\n")
    assert resolve_config_path("stage3.yaml") == "stage3.yaml", "an existing file wins over a packaged name"
    assert resolve_config_path("configs/missing.yaml") == "configs/missing.yaml", "paths are the parser's to judge"
    assert resolve_config_path("{seed_everything: 1}") == "{seed_everything: 1}", "inline YAML passes through"
    with pytest.raises(FileNotFoundError, match="'stage4'.*synthetic"):
        resolve_config_path("stage4")
    args = resolve_config_args(["fit", "-c", "stage1", "--config=stage2", "--model.fusion=gated", "--config", "x/y.yaml"])
    assert args == ["fit", "-c", str(CONFIGS / "stage1.yaml"), f"--config={CONFIGS / 'stage2.yaml'}",
                    "--model.fusion=gated", "--config", "x/y.yaml"]


def test_progressive_takes_the_packaged_demo_config_by_name(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: the name must resolve inside the package
    with pytest.raises(SystemExit) as exit_info:
        main(["progressive", "--config", "synthetic", "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["class_path"] == "ctiir.datamodules.SyntheticDataModule" and set(config["stages"]) == {"I", "II", "III"}


def test_unknown_config_name_is_a_short_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "-c", "stage4"]) == 2
    err = capsys.readouterr().err
    assert "ctiir fit: error: config 'stage4'" in err and "stage3" in err and len(err.splitlines()) <= 3


def test_config_command_lists_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    listing = capsys.readouterr().out
    for name in packaged_configs():
        assert name in listing
    assert main(["config", "stage3"]) == 0
    assert capsys.readouterr().out == (CONFIGS / "stage3.yaml").read_text()
    with pytest.raises(SystemExit):
        main(["config", "stage4"])
    assert "stage4" in capsys.readouterr().err


def printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["fixed", "gated", "adaptive"])
def test_fusion_swaps_in_one_cli_flag(capsys: pytest.CaptureFixture[str], name: str) -> None:
    config = printed_config(capsys, "-c", "stage3", f"--model.fusion={name}")
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
    args = ["-c", stage]
    if stage in ("fashioniq", "shoes", "cirr"):
        args += ["--data.root", "/data/somewhere"]
    config = printed_config(capsys, *args)
    assert config["model"]["class_path"].startswith("ctiir.stages.")


def test_fit_runs_a_stage_from_yaml_with_a_class_path_fusion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ctiir.datamodules.synthetic import generate

    root = generate(tmp_path / "synth", seed=0, size="tiny")
    # Lightning's loggers reach the root handler (caplog's) only when propagating; look at them directly.
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)  # as a `logging.basicConfig(level=INFO)` would leave it: main() quietens it
    try:
        code = main(
        [
            "fit", "-c", "stage3",
            f"--data.root={root}", "--data.size=tiny", "--data.batch_size=8", "--data.num_workers=0",
            "--model.fusion=gated", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--data.max_val_queries=8",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false",
        ]
        )
    finally:
        lightning_logger.removeHandler(caplog.handler)
    assert code == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("`Trainer.fit` stopped" in m for m in messages), "Lightning's own lines still come through"
    assert not [m for m in messages if "💡 Tip" in m or "Parsing" in m or "initialized randomly" in m], messages
    ckpts = list((tmp_path / "run").rglob("*.ckpt"))
    assert ckpts, "ModelCheckpoint(monitor=val/score) saved nothing: the retrieval callback did not log val/score"
    from ctiir.fusion import Gated
    from ctiir.stages import ComposedRetrieval

    assert isinstance(ComposedRetrieval.load_from_checkpoint(ckpts[0]).fusion, Gated)


def test_synth_subcommand_writes_the_benchmark(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path / "s"), "--seed=3", "--size=tiny", "--progress_bar=false"]) == 0
    assert (tmp_path / "s" / "captions" / "cap.dress.train.json").is_file()


# ---------------------------------------------------------------------------------------------- output
def _tip_and_open_clip_lines(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> list[str]:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from ctiir.backbones import build_backbone

    caplog.clear()
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(caplog.handler)
    try:
        build_backbone("tiny")  # open_clip's get_tokenizer logs "Parsing tokenizer identifier..." at INFO
        L.Trainer(logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False)
    finally:
        lightning_logger.removeHandler(caplog.handler)
    return [r.getMessage() for r in caplog.records if "💡 Tip" in r.getMessage() or "Parsing" in r.getMessage()]


def test_verbose_brings_back_what_the_default_silences(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    configure_logging(verbose=True)
    loud = _tip_and_open_clip_lines(caplog, tmp_path)
    assert any("Tip" in m for m in loud) and any("Parsing" in m for m in loud), loud
    configure_logging(verbose=False)
    assert _tip_and_open_clip_lines(caplog, tmp_path) == []
    assert logging.getLogger("ctiir.pipeline").isEnabledFor(logging.INFO), "ctiir's own progress lines stay"
    assert logging.getLogger("open_clip").isEnabledFor(logging.WARNING), "warnings stay"


# ---------------------------------------------------------------------------------------------- short errors
def _short_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    # Lightning's own console handler may print before (its "Seed set to 0", or a "Logging error" when it still
    # holds an earlier test's closed capture stream): the error is what comes from our line on.
    start = err.find(f"ctiir {args[0]}: error: ")
    assert start >= 0, err
    err = err[start:]
    assert "Traceback" not in err and len(err.splitlines()) <= 8, err
    return err


def test_unknown_class_is_a_short_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = _short_error(capsys, ["fit", "-c", "stage3", "--model.class_path=ctiir.stages.Nope"])
    assert "ctiir.stages.Nope" in err and "has no attribute 'Nope'" in err


def test_offline_hub_tag_is_a_short_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = json.dumps({"pretrained": "laion2b_s34b_b79k", "cache_dir": str(tmp_path / "empty-cache")})
    args = ["fit", "-c", "stage3", f"--data.root={tmp_path / 'synth'}", "--model.backbone=openclip:ViT-B-32",
            f"--model.backbone_kwargs={kwargs}"]
    err = _short_error(capsys, args)
    assert "could not create ctiir.stages.ComposedRetrieval" in err
    assert "HubOfflineError" in err and "laion2b_s34b_b79k" in err and "HF_HUB_OFFLINE" in err

    from ctiir.backbones.openclip import HubOfflineError
    from ctiir.lightning_cli import ConfigError

    with pytest.raises(ConfigError) as info:  # --verbose: the whole chain, as a traceback
        main(["--verbose", *args])
    assert isinstance(info.value.__cause__.__cause__, HubOfflineError)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_logger_package_is_a_short_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _short_error(capsys, ["fit", "-c", "stage3", f"--data.root={tmp_path}", "--trainer.logger=WandbLogger"])
    assert "could not create lightning.pytorch.loggers.WandbLogger" in err and "wandb" in err


def test_fit_on_a_synthetic_root_of_another_size_names_the_flag_that_uses_it(tmp_path: Path) -> None:
    """`ctiir synth --size tiny` then `ctiir fit -c stage3`: the message names --data.init_args.size=tiny, not
    an --overwrite that fit does not have."""
    from ctiir.datamodules.synthetic import SyntheticOutputError, generate

    root = generate(tmp_path / "synth", seed=0, size="tiny")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(SyntheticOutputError) as info:
        main(["fit", "-c", "stage3", f"--data.init_args.root={root}", "--trainer.fast_dev_run=true",
              f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.enable_progress_bar=false"])
    message = str(info.value)
    assert f"{root} holds the synthetic benchmark with seed=0, size='tiny'" in message
    assert "asks for size='default'" in message
    assert "--data.init_args.size=tiny" in message and "--data.size=tiny" in message
    assert "(--overwrite)" not in message and f"ctiir synth --out {root} --seed 0 --size default --overwrite=true" in message
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, "the dataset there is left alone"

    from ctiir.datamodules import SyntheticDataModule

    with pytest.raises(SyntheticOutputError, match=r"--data.init_args.synth_seed=0.*synth_seed=0\)"):
        SyntheticDataModule(root=str(root), size="tiny", synth_seed=3).prepare_data()
