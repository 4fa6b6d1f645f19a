"""Datamodules: FashionIQ, Shoes, CIRR, custom triplets, and the embedded synthetic benchmark.

``ctiir.datamodules.protocol`` holds the evaluation rules that all of them share; ``ctiir.datamodules.request``
the contract through which a stage asks a datamodule for data.
"""

from ctiir.datamodules.base import CTIIRDataModule
from ctiir.datamodules.cirr import CIRRDataModule
from ctiir.datamodules.custom import CustomDataModule
from ctiir.datamodules.fashioniq import FashionIQDataModule
from ctiir.datamodules.protocol import ComposedQuery, ComposedSource, EvaluationSet, GalleryImage, build_evaluation
from ctiir.datamodules.request import DataRequest
from ctiir.datamodules.shoes import ShoesDataModule
from ctiir.datamodules.synthetic import SyntheticDataModule
from ctiir.datamodules.tasks import RetrievalTask
from ctiir.datamodules.transforms import Preprocessing

__all__ = [
    "CIRRDataModule",
    "CTIIRDataModule",
    "ComposedQuery",
    "ComposedSource",
    "CustomDataModule",
    "DataRequest",
    "EvaluationSet",
    "FashionIQDataModule",
    "GalleryImage",
    "Preprocessing",
    "RetrievalTask",
    "ShoesDataModule",
    "SyntheticDataModule",
    "build_evaluation",
]
