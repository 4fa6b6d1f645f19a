"""What loggers record: the resolved backbone spec and fusion config (not the arguments as given), and the
loggers ``ctiir progressive`` uses: CSV in each stage's folder by default, or the config's ``trainer.logger``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from ctiir.cli import main
from ctiir.pipeline import stage_loggers

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_a_csv_logger_records_the_resolved_backbone_and_fusion(synth_root: Path, tmp_path: Path) -> None:
    """Through LightningCLI (whose given-hyperparameters path is what Lightning snapshots): hparams.yaml holds
    the backbone spec, the fusion's config with its sizes resolved, and the preprocessing served."""
    code = main([
        "fit", "-c", "stage3", "--model.init_args.fusion=ctiir.fusion.Gated",
        "--model.init_args.fusion.init_args.dropout=0.2",
        f"--data.init_args.root={synth_root}", "--data.init_args.size=tiny", "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.logger=CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
    ])
    assert code == 0
    [written] = list(tmp_path.rglob("hparams.yaml"))
    hparams = yaml.safe_load(written.read_text())
    assert hparams["backbone"]["name"] == "tiny" and hparams["backbone"]["model_cfg"]["embed_dim"] == 128
    assert hparams["backbone"]["pretrained"] is None
    assert hparams["fusion"] == {"name": "gated", "embed_dim": 128, "projection_dim": 512, "hidden_dim": 1024, "dropout": 0.2}
    assert hparams["preprocess"] == {"mode": "backbone", "size": 64, "target_pad_ratio": None}
    assert hparams["lr_backbone"] == 3.0e-4 and "_class_path" not in hparams


# ---------------------------------------------------------------------------------------------- ctiir progressive
def test_stage_loggers_default_none_names_class_paths_and_lists(tmp_path: Path) -> None:
    default = stage_loggers(True, tmp_path)
    assert isinstance(default, CSVLogger) and Path(default.log_dir) == tmp_path / "logs"
    assert stage_loggers(False, tmp_path) is False and stage_loggers(None, tmp_path) is False
    named = stage_loggers("CSVLogger", tmp_path)
    assert isinstance(named, CSVLogger) and Path(named.save_dir) == tmp_path, "writes into the stage folder"
    mine = stage_loggers(
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "elsewhere")}},
        tmp_path,
    )
    assert Path(mine.save_dir) == tmp_path / "elsewhere", "a save_dir of the config is kept"
    both = stage_loggers(["CSVLogger", {"class_path": "CSVLogger", "init_args": {"name": "second"}}], tmp_path)
    assert [type(x) for x in both] == [CSVLogger, CSVLogger] and both[1].name == "second"
    with pytest.raises(ValueError, match="trainer.logger: cannot import 'lightning.pytorch.loggers.NopeLogger'"):
        stage_loggers("NopeLogger", tmp_path)
    with pytest.raises(ValueError, match="trainer.logger: cannot create .*CSVLogger.*colour"):
        stage_loggers({"class_path": "CSVLogger", "init_args": {"colour": 1}}, tmp_path)
    with pytest.raises(ValueError, match="trainer.logger: expected"):
        stage_loggers({"class": "CSVLogger"}, tmp_path)
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        with pytest.raises(ValueError, match="cannot create lightning.pytorch.loggers.TensorBoardLogger.*tensorboard"):
            stage_loggers("TensorBoardLogger", tmp_path)


@pytest.mark.slow
def test_progressive_takes_the_logger_from_the_config_per_stage(synth_root: Path, tmp_path: Path) -> None:
    from ctiir.pipeline import progressive_main

    run_dir = tmp_path / "run"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(run_dir), "backbone": "tiny", "progress_bar": False,
        "data": {"class_path": "ctiir.datamodules.SyntheticDataModule",
                 "init_args": {"root": str(synth_root), "size": "tiny", "batch_size": 16, "max_val_queries": 4}},
        "trainer": {"accelerator": "cpu", "devices": 1, "limit_train_batches": 1, "limit_val_batches": 1,
                    "logger": False},
        "stages": {"III": {"max_epochs": 1, "model": {"fusion": "gated"},
                           "trainer": {"logger": {"class_path": "CSVLogger", "init_args": {"name": "mine"}}}}},
    }))
    assert progressive_main(["--config", str(config), "--skip=[I,II]"]) == 0
    [written] = list((run_dir / "stage-III" / "mine").rglob("hparams.yaml"))
    assert yaml.safe_load(written.read_text())["fusion"]["name"] == "gated"
    stage_config = yaml.safe_load((run_dir / "stage-III" / "config.yaml").read_text())
    assert stage_config["trainer"]["logger"] == {"class_path": "CSVLogger", "init_args": {"name": "mine"}}
