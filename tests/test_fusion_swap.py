"""The one-line fusion swap, in every form the docs give, runs ``ctiir fit`` and trains the fusion it names.

Each case runs ``ctiir.cli.main(["fit", ...])`` with ``fast_dev_run`` on the tiny synthetic benchmark and
inspects the module that ``Trainer.fit`` trained: its fusion class, the arguments recorded in its
hyperparameters (what a checkpoint rebuilds from) and that one optimiser step moved the fusion's weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from ctiir.cli import main
from ctiir.configs import packaged_configs
from ctiir.fusion import AdaptiveWeighting, FixedSum, Fusion, Gated

pytestmark = pytest.mark.usefixtures("restore_logging")


class FitRecord:
    """What ``Trainer.fit`` was given and did: the module, its fusion weights before, the trainer after."""

    def __init__(self) -> None:
        self.runs: list[tuple[Any, dict[str, torch.Tensor], L.Trainer]] = []

    def only(self) -> tuple[Any, dict[str, torch.Tensor], L.Trainer]:
        assert len(self.runs) == 1, f"expected one fit, got {len(self.runs)}"
        return self.runs[0]


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> FitRecord:
    """Record every ``Trainer.fit`` that LightningCLI runs (it calls ``trainer.fit(model=..., datamodule=...)``)."""
    record = FitRecord()
    original = L.Trainer.fit

    def fit(self: L.Trainer, model: Any, *args: Any, **kwargs: Any) -> None:
        before = {k: v.detach().clone() for k, v in model.fusion.state_dict().items()}
        original(self, model, *args, **kwargs)
        record.runs.append((model, before, self))

    monkeypatch.setattr(L.Trainer, "fit", fit)
    return record


def fit_args(root: Path, tmp_path: Path, *extra: str, config: str = "stage3") -> list[str]:
    return [
        "fit", "-c", config, *extra,
        f"--data.init_args.root={root}", "--data.init_args.size=tiny", "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0", "--data.init_args.max_val_queries=8",
        "--trainer.fast_dev_run=true", "--retrieval.every_n_epochs=2",  # no retrieval evaluation: not what is tested
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]


def assert_trained(fits: FitRecord, cls: type[Fusion], tmp_path: Path, **arguments: Any) -> None:
    model, before, trainer = fits.only()
    assert type(model.fusion) is cls
    recorded = model.hparams["fusion"]
    assert recorded["name"] == cls.__dict__["_fusion_registry_name"] and recorded["embed_dim"] == model.backbone.embed_dim
    for key, value in arguments.items():
        assert recorded[key] == value and getattr(model.fusion, key) == value, (key, recorded)
    assert trainer.global_step == 1, "fast_dev_run: one optimiser step"
    if before:  # a learned fusion: the step moved its weights
        after = model.fusion.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), "the fusion's weights did not change"
    # The checkpoint rebuilds the same fusion, with the trained weights.
    trainer.save_checkpoint(tmp_path / "trained.ckpt")
    rebuilt = type(model).load_from_checkpoint(tmp_path / "trained.ckpt")
    assert type(rebuilt.fusion) is cls and rebuilt.fusion.config == model.fusion.config
    for key, value in model.fusion.state_dict().items():
        assert torch.equal(rebuilt.fusion.state_dict()[key], value), key


def write_yaml(path: Path, content: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------- every form trains
def test_fit_with_the_name_form(synth_root: Path, tmp_path: Path, fits: FitRecord) -> None:
    assert main(fit_args(synth_root, tmp_path, "--model.init_args.fusion=gated")) == 0
    assert_trained(fits, Gated, tmp_path, dropout=0.5)


def test_fit_with_the_short_name_form_and_fusion_kwargs(synth_root: Path, tmp_path: Path, fits: FitRecord) -> None:
    args = fit_args(synth_root, tmp_path, "--model.fusion=fixed", '--model.fusion_kwargs={"alpha": 0.3}')
    assert main(args) == 0
    assert_trained(fits, FixedSum, tmp_path, alpha=0.3)


def test_fit_with_the_class_path_form(synth_root: Path, tmp_path: Path, fits: FitRecord) -> None:
    assert main(fit_args(synth_root, tmp_path, "--model.init_args.fusion=ctiir.fusion.Gated")) == 0
    assert_trained(fits, Gated, tmp_path, dropout=0.5)


def test_fit_with_a_class_path_and_one_argument_on_the_command_line(
    synth_root: Path, tmp_path: Path, fits: FitRecord
) -> None:
    args = fit_args(
        synth_root, tmp_path,
        "--model.init_args.fusion=ctiir.fusion.AdaptiveWeighting", "--model.init_args.fusion.init_args.mode=rank",
    )
    assert main(args) == 0
    assert_trained(fits, AdaptiveWeighting, tmp_path, mode="rank")


def test_fit_with_the_docs_yaml_in_a_second_config_file(synth_root: Path, tmp_path: Path, fits: FitRecord) -> None:
    """docs/fusion.md's snippet, as a second ``-c`` file over the packaged stage3 config."""
    override = write_yaml(
        tmp_path / "fusion.yaml",
        {"model": {"fusion": {"class_path": "ctiir.fusion.AdaptiveWeighting", "init_args": {"mode": "rank"}}}},
    )
    assert main(fit_args(synth_root, tmp_path, "-c", override)) == 0
    assert_trained(fits, AdaptiveWeighting, tmp_path, mode="rank", tau_w=0.05)


def test_fit_with_the_yaml_form_in_one_file(synth_root: Path, tmp_path: Path, fits: FitRecord) -> None:
    config = yaml.safe_load(packaged_configs()["stage3"].read_text(encoding="utf-8"))
    config["model"]["init_args"]["fusion"] = {
        "class_path": "ctiir.fusion.Gated", "init_args": {"projection_dim": 16, "hidden_dim": 24, "dropout": 0.2},
    }
    path = write_yaml(tmp_path / "mine.yaml", config)
    assert main(fit_args(synth_root, tmp_path, config=path)) == 0
    assert_trained(fits, Gated, tmp_path, projection_dim=16, hidden_dim=24, dropout=0.2)


# ---------------------------------------------------------------------------------------------- wrong class paths
def short_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    start = err.find("ctiir fit: error: ")
    assert start >= 0, err
    err = err[start:]
    assert "Traceback" not in err and len(err.splitlines()) <= 6, err
    return err


@pytest.mark.parametrize(
    "value",
    ["ctiir.fusion.Nope", "{class_path: ctiir.fusion.Nope, init_args: {mode: rank}}"],
    ids=["flag", "yaml"],
)
def test_an_unknown_class_path_is_a_short_error_naming_it(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    err = short_error(capsys, fit_args(synth_root, tmp_path, f"--model.init_args.fusion={value}"))
    assert "ctiir.fusion.Nope" in err and re.search(r"has no (attribute )?'Nope'", err), err


def test_a_class_that_is_not_a_fusion_is_a_short_error(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = short_error(capsys, fit_args(synth_root, tmp_path, "--model.init_args.fusion=torch.nn.Linear"))
    assert "'torch.nn.Linear' is neither a registered fusion name" in err and "adaptive" in err


def test_a_bad_fusion_argument_is_a_short_error(
    synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = short_error(
        capsys,
        fit_args(synth_root, tmp_path, "--model.init_args.fusion=ctiir.fusion.AdaptiveWeighting",
                 "--model.init_args.fusion.init_args.mode=sideways"),
    )
    # jsonargparse drops the class when one of its arguments fails; the message says so and how to list them.
    assert "got keys ['mode']" in err and "--model.init_args.fusion.help" in err
