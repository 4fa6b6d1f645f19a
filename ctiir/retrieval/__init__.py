"""Using a trained model: a gallery index on disk, exact and FAISS search, result pictures, an HTTP server.

``ctiir index`` builds an index, ``ctiir search`` queries it, ``ctiir serve`` serves it; from Python,
``Retriever.from_checkpoint(ckpt, index=folder).search(image=..., text=...)``. See docs/retrieval.md.
"""

from ctiir.retrieval.errors import (
    IndexCorruptError,
    IndexMismatchError,
    QueryError,
    RetrievalError,
    UnreadableImagesError,
)
from ctiir.retrieval.storage import GalleryIndex, load_index

__all__ = [
    "GalleryIndex",
    "IndexCorruptError",
    "IndexMismatchError",
    "QueryError",
    "RetrievalError",
    "UnreadableImagesError",
    "load_index",
]
