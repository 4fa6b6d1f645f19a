"""Every datamodule forwards the base arguments with ``**kwargs``; LightningCLI (jsonargparse) still lists and
passes every one of them, so no datamodule repeats or drops them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from ctiir.datamodules import (
    CIRRDataModule,
    CTIIRDataModule,
    CustomDataModule,
    FashionIQDataModule,
    HFTripletDataModule,
    ShoesDataModule,
    SyntheticDataModule,
)

BASE = [p for p in inspect.signature(CTIIRDataModule.__init__).parameters if p != "self"]
NOT_BASE = {"self", "kwargs"}
MODULES = [CIRRDataModule, CustomDataModule, FashionIQDataModule, HFTripletDataModule, ShoesDataModule, SyntheticDataModule]


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_the_cli_lists_and_passes_every_base_argument(cls: type, tmp_path: Path) -> None:
    own = set(inspect.signature(cls.__init__).parameters) - NOT_BASE
    assert not own & set(BASE), f"{cls.__name__} repeats base arguments {sorted(own & set(BASE))}"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(CTIIRDataModule, "data")
    chosen = {"batch_size": 3, "num_workers": 0, "preprocess": "targetpad", "target_pad_ratio": 1.4,
              "on_missing": "skip", "train_text_mode": "first", "eval_batch_size": 5, "max_val_queries": 7, "seed": 11,
              "breakdown": ("caption_length",)}
    assert set(chosen) == set(BASE)
    required = (
        {"triplets": str(tmp_path / "saved")} if cls is HFTripletDataModule
        else {"root": str(tmp_path), **({"triplets": "t.jsonl"} if cls is CustomDataModule else {})}
    )
    class_path = f"{cls.__module__}.{cls.__name__}"
    defaults = parser.parse_args(["--data", json.dumps({"class_path": class_path, "init_args": required})])
    assert set(BASE) <= set(defaults.data.init_args.as_dict()), "a base argument is missing from the CLI"
    config = parser.parse_args(["--data", json.dumps({"class_path": class_path, "init_args": {**required, **chosen}})])
    dm = parser.instantiate_classes(config).data
    assert isinstance(dm, cls)
    got = {name: getattr(dm, name) for name in chosen}
    assert got == {**chosen, "eval_batch_size": 5}, "a base argument was dropped on the way"
