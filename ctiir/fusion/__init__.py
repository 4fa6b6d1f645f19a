"""Fusion registry: how a reference image and a modification text become one query.

``fixed`` (:class:`FixedSum`), ``gated`` (:class:`Gated`) and the paper's ``adaptive``
(:class:`AdaptiveWeighting`) share the :class:`Fusion` contract, so a stage swaps them by name.
"""

from ctiir.fusion.base import Fused, Fusion, as_fused
from ctiir.fusion.registry import build_fusion, list_fusions, register_fusion

# Importing the entries registers them.
from ctiir.fusion.fixed_sum import FixedSum  # noqa: E402  isort: skip
from ctiir.fusion.gated import Gated  # noqa: E402  isort: skip
from ctiir.fusion.adaptive import AdaptiveWeighting  # noqa: E402  isort: skip

__all__ = ["AdaptiveWeighting", "FixedSum", "Fused", "Fusion", "Gated", "as_fused", "build_fusion", "list_fusions", "register_fusion"]
