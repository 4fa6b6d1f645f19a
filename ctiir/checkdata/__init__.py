"""``ctiir check-data``: find what is wrong with a dataset before a long run trips over it.

A run that dies on image 40,000 of an epoch, or a benchmark number computed on a silently shrunken gallery,
costs more than a scan up front. This command reads every annotation file leniently (a bad entry is a
reported problem, not a crash), decodes every referenced image, and says what the problems do to the
evaluation counts: the counts after filtering come from the same protocol builder that training uses.
``--write_filtered OUT`` writes annotation files without the bad entries, for use with the original images
through the datamodule's ``annotations_root``.

FashionIQ, Shoes and CIRR are checked (``ctiir.checkdata.fashioniq``, ``.shoes``, ``.cirr``); a new dataset
registers a ``DatasetCheck`` in ``CHECKS``.
"""

from ctiir.checkdata import cirr, fashioniq, shoes  # noqa: F401  importing them registers the checks
from ctiir.checkdata.cli import check_data_main
from ctiir.checkdata.core import CHECKS, DatasetCheck, UsageError, run_check, write_filtered
from ctiir.checkdata.report import CheckReport, CountEffect, Problem

__all__ = [
    "CHECKS",
    "CheckReport",
    "CountEffect",
    "DatasetCheck",
    "Problem",
    "UsageError",
    "check_data_main",
    "run_check",
    "write_filtered",
]
