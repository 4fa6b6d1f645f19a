"""Datamodules: FashionIQ, Shoes, CIRR, custom triplets, and the embedded synthetic benchmark."""

from ctiir.datamodules.base import CTIIRDataModule
from ctiir.datamodules.cirr import CIRRDataModule
from ctiir.datamodules.custom import CustomDataModule
from ctiir.datamodules.fashioniq import FashionIQDataModule
from ctiir.datamodules.shoes import ShoesDataModule
from ctiir.datamodules.synthetic import SyntheticDataModule
from ctiir.datamodules.tasks import RetrievalTask

__all__ = [
    "CIRRDataModule",
    "CTIIRDataModule",
    "CustomDataModule",
    "FashionIQDataModule",
    "RetrievalTask",
    "ShoesDataModule",
    "SyntheticDataModule",
]
