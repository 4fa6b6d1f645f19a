"""Loading checkpoints: ``weights_only=True`` everywhere ctiir reads one, a tampered file refused (never run), and
every unusable file a ``CheckpointError`` that names it and says what is wrong."""

from __future__ import annotations

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ctiir.checkpoints import CheckpointError, SafeCheckpointIO, load_checkpoint, rng_states, set_rng_states
from ctiir.stages import ComposedRetrieval, OpenDomainAlignment


class Payload:
    """Unpickling this runs ``os.makedirs(marker)``: the kind of object a crafted checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="module")
def stage_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuine ctiir checkpoint (Stage I, tiny backbone, written by a Trainer)."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = OpenDomainAlignment(backbone="tiny")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(folder), plugins=[SafeCheckpointIO()])
    trainer.strategy.connect(model)
    path = folder / "stage1.ckpt"
    trainer.save_checkpoint(path)
    return path


def tampered(source: Path, target: Path, marker: Path) -> Path:
    """The genuine checkpoint with one crafted object added."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["note"] = Payload(marker)
    torch.save(checkpoint, target)
    return target


def test_a_genuine_checkpoint_loads_with_weights_only(stage_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(stage_checkpoint)
    assert checkpoint["hyper_parameters"]["backbone"]["name"] == "tiny"
    assert isinstance(ComposedRetrieval(backbone="tiny", init_from=str(stage_checkpoint)), ComposedRetrieval)
    assert isinstance(OpenDomainAlignment.load_from_checkpoint(stage_checkpoint), OpenDomainAlignment)


@pytest.mark.parametrize("how", ["init_from", "load_from_checkpoint", "trainer"])
def test_a_tampered_checkpoint_is_refused_and_its_code_never_runs(how: str, stage_checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tampered(stage_checkpoint, tmp_path / "tampered.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"tampered\.ckpt: refused: .*(posix|os)\.makedirs.*weights_only=True"):
        if how == "init_from":
            ComposedRetrieval(backbone="tiny", init_from=str(path))
        elif how == "load_from_checkpoint":
            OpenDomainAlignment.load_from_checkpoint(path)
        else:
            SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, map_location="cpu", weights_only=False)  # what init_from used to do: the code runs
    assert marker.is_dir()


def corrupt_files(genuine: Path, folder: Path) -> dict[str, Path]:
    data = genuine.read_bytes()
    files = {"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b"", "text": b"not a checkpoint\n"}
    out = {}
    for name, content in files.items():
        out[name] = folder / f"{name}.ckpt"
        out[name].write_bytes(content)
    return out


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "text"])
def test_a_corrupt_checkpoint_is_an_error_naming_the_file(kind: str, stage_checkpoint: Path, tmp_path: Path) -> None:
    path = corrupt_files(stage_checkpoint, tmp_path)[kind]
    pattern = rf"{kind}\.ckpt: (empty file|not a readable checkpoint)"
    with pytest.raises(CheckpointError, match=pattern):
        OpenDomainAlignment.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"init_from: .*{pattern}"):
        ComposedRetrieval(backbone="tiny", init_from=str(path))
    with pytest.raises(CheckpointError, match=pattern):
        SafeCheckpointIO().load_checkpoint(path)


def test_a_plain_state_dict_is_not_taken_for_a_lightning_checkpoint(tmp_path: Path) -> None:
    """The finding: ``load_from_checkpoint`` of a ``torch.save``d dict said ``KeyError: 'pytorch-lightning_version'``."""
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": ComposedRetrieval(backbone="tiny").state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a Lightning checkpoint: no 'pytorch-lightning_version'"):
        ComposedRetrieval.load_from_checkpoint(path)
    torch.save(ComposedRetrieval(backbone="tiny").state_dict(), path)  # the bare state dict
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a Lightning checkpoint: no 'pytorch-lightning_version' or 'state_dict'"):
        ComposedRetrieval.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"init_from: .*weights\.pt: not a Lightning checkpoint: no 'state_dict'"):
        ComposedRetrieval(backbone="tiny", init_from=str(path))
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"weights\.pt: holds a list, not a checkpoint"):
        ComposedRetrieval.load_from_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt not found"):
        ComposedRetrieval.load_from_checkpoint(tmp_path / "missing.ckpt")


def test_a_checkpoint_without_hyper_parameters_is_refused_not_loaded_with_defaults(stage_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(stage_checkpoint, map_location="cpu", weights_only=True)
    del checkpoint["hyper_parameters"]
    path = tmp_path / "no-hparams.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"no-hparams\.ckpt: no 'hyper_parameters'.*backbone, fusion and preprocessing"
                       r".*missing: backbone, fusion"):
        OpenDomainAlignment.load_from_checkpoint(path)
    loaded = OpenDomainAlignment.load_from_checkpoint(path, backbone="tiny", fusion="fixed")  # said explicitly: fine
    assert loaded.hparams["backbone"]["name"] == "tiny"
    checkpoint["hyper_parameters"] = {"lr_backbone": 1e-4}
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"'hyper_parameters' has no 'backbone' or 'fusion'"):
        OpenDomainAlignment.load_from_checkpoint(path)


def test_a_checkpoint_of_another_backbone_is_an_error_naming_both(stage_checkpoint: Path) -> None:
    from ctiir.backbones import build_backbone
    from ctiir.backbones.registry import BACKBONES

    other = build_backbone("hf-clip", **BACKBONES.test_kwargs("hf-clip"))
    with pytest.raises(ValueError, match=r"init_from: .*stage1\.ckpt was trained with backbone \{'name': 'tiny'.*"
                       r"but this stage uses \{'name': 'hf-clip'"):
        ComposedRetrieval(backbone=other, init_from=str(stage_checkpoint))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    torch.rand(3), random.random(), np.random.rand()
    path = tmp_path / "rng.pt"
    torch.save({"rng": rng_states()}, path)
    expected = (torch.rand(4), random.random(), np.random.rand(2))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    set_rng_states(load_checkpoint(path)["rng"])
    again = (torch.rand(4), random.random(), np.random.rand(2))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and np.array_equal(expected[2], again[2])


def test_ctiir_fit_writes_and_reads_checkpoints_through_the_safe_plugin(tmp_path: Path) -> None:
    from ctiir.datamodules.base import CTIIRDataModule
    from ctiir.lightning_cli import CTIIRCLI
    from ctiir.stages.base import CTIIRStage

    args = ["--model=ctiir.stages.ComposedRetrieval", "--data=ctiir.datamodules.SyntheticDataModule",
            f"--data.init_args.root={tmp_path / 'never-generated'}", "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}"]
    cli = CTIIRCLI(CTIIRStage, CTIIRDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args, run=False,
                   auto_configure_optimizers=False, save_config_kwargs={"overwrite": True})
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
