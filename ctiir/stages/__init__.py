"""The three progressive stages, one LightningModule each over a shared base."""

from ctiir.stages.alignment import OpenDomainAlignment
from ctiir.stages.base import CTIIRStage
from ctiir.stages.composed import ComposedRetrieval
from ctiir.stages.domain import DOMAIN_TASKS, DomainPretraining

STAGES = {"I": OpenDomainAlignment, "II": DomainPretraining, "III": ComposedRetrieval}

__all__ = ["CTIIRStage", "ComposedRetrieval", "DOMAIN_TASKS", "DomainPretraining", "OpenDomainAlignment", "STAGES"]
