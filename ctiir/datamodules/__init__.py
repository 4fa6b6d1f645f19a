"""Datamodules: FashionIQ, Shoes, CIRR, custom triplets (files or Hugging Face datasets), and the embedded
synthetic benchmark.

``ctiir.datamodules.protocol`` holds the evaluation rules that all of them share; ``ctiir.datamodules.request``
the contract through which a stage asks a datamodule for data.

The names below are imported on first use (PEP 562), so that light modules of this package, such as the
synthetic generator behind ``ctiir synth``, do not pull in Lightning and torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CIRRDataModule": "cirr",
    "CTIIRDataModule": "base",
    "ComposedQuery": "protocol",
    "ComposedSource": "protocol",
    "CustomDataModule": "custom",
    "DataRequest": "request",
    "EvaluationSet": "protocol",
    "FashionIQDataModule": "fashioniq",
    "GalleryImage": "protocol",
    "HFTripletDataModule": "hf",
    "Preprocessing": "transforms",
    "RetrievalTask": "tasks",
    "ShoesDataModule": "shoes",
    "SyntheticDataModule": "synthetic_datamodule",
    "build_evaluation": "protocol",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from ctiir.datamodules.base import CTIIRDataModule  # noqa: F401
    from ctiir.datamodules.cirr import CIRRDataModule  # noqa: F401
    from ctiir.datamodules.custom import CustomDataModule  # noqa: F401
    from ctiir.datamodules.fashioniq import FashionIQDataModule  # noqa: F401
    from ctiir.datamodules.hf import HFTripletDataModule  # noqa: F401
    from ctiir.datamodules.protocol import ComposedQuery, ComposedSource, EvaluationSet, GalleryImage, build_evaluation  # noqa: F401
    from ctiir.datamodules.request import DataRequest  # noqa: F401
    from ctiir.datamodules.shoes import ShoesDataModule  # noqa: F401
    from ctiir.datamodules.synthetic_datamodule import SyntheticDataModule  # noqa: F401
    from ctiir.datamodules.tasks import RetrievalTask  # noqa: F401
    from ctiir.datamodules.transforms import Preprocessing  # noqa: F401
