"""Errors for bad data. Each names the file and the entry at fault, so a user can fix the data."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing data: the message names the file, the split and the annotation entry."""


class AnnotationError(DataError):
    """A malformed annotation file or entry."""
