"""Using a trained model: a gallery index on disk, exact and FAISS search, result pictures, an HTTP server.

``ctiir index`` builds an index, ``ctiir search`` queries it, ``ctiir serve`` serves it; from Python,
``Retriever.from_checkpoint(ckpt, index=folder).search(image=..., text=...)``. See docs/retrieval.md.

The errors are imported eagerly (they are plain classes); ``GalleryIndex`` and ``load_index`` only when first
used, because they need torch: the command modules of this package live here, and ``ctiir search --help``
must not wait for torch and Lightning (the convention of ``ctiir.cliargs``).
"""

from typing import Any

from ctiir.retrieval.errors import (
    IndexCorruptError,
    IndexMismatchError,
    QueryError,
    RetrievalError,
    UnreadableImagesError,
)

_FROM_STORAGE = ("GalleryIndex", "load_index")

__all__ = [
    "GalleryIndex",
    "IndexCorruptError",
    "IndexMismatchError",
    "QueryError",
    "RetrievalError",
    "UnreadableImagesError",
    "load_index",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_STORAGE:
        from ctiir.retrieval import storage

        return getattr(storage, name)
    raise AttributeError(f"module 'ctiir.retrieval' has no attribute {name!r}")
