"""The errors of the retrieval package: each names the file, key or value at fault.

They derive from ``ValueError`` so that callers that already catch bad input keep working, and from one
``RetrievalError`` so that the command-line tools can turn any of them into one line instead of a traceback.
"""

from __future__ import annotations


class RetrievalError(ValueError):
    """Base of every error raised for a bad index, checkpoint or query."""


class IndexCorruptError(RetrievalError):
    """The files of an index disagree with each other or with their recorded hashes."""


class IndexMismatchError(RetrievalError):
    """The index was built by another checkpoint, backbone or embedding size than the one asked for."""


class UnreadableImagesError(RetrievalError):
    """Some gallery images could not be read and ``strict`` asked for that to be an error."""


class QueryError(RetrievalError):
    """A query that cannot be run: no image and no text, an unreadable image, or ``k`` out of range."""
