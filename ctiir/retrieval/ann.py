"""Approximate search with FAISS (the ``faiss`` extra): ``flat``, ``hnsw`` or ``ivf``.

Why these three: ``flat`` is FAISS's exact inner-product scan (a reference, and fast on a GPU FAISS);
``hnsw`` is a graph index, the fastest on CPU at high recall but memory-hungry and slow to build; ``ivf``
clusters the gallery and scans ``nprobe`` clusters per query, cheap to build and to update. An index in
float16 uses FAISS's fp16 scalar quantizer in each backend, so the approximate index takes the memory
the exact one does.

Every built index is checked against exact search on a sample of gallery vectors used as queries, and
its recall@10 is recorded in the manifest: a number to look at before trusting the speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctiir.retrieval.errors import RetrievalError
from ctiir.retrieval.exact import exact_topk

BACKENDS = ("flat", "hnsw", "ivf")


def import_faiss() -> Any:
    """The ``faiss`` module, or an error that says how to install it."""
    try:
        import faiss
    except ImportError as err:
        raise RetrievalError("approximate search needs FAISS: pip install 'ctiir[faiss]' (faiss-cpu, or a GPU FAISS)") from err
    return faiss


@dataclass
class FaissOptions:
    """How to build and query a FAISS index.

    Args:
        backend: ``flat``, ``hnsw`` or ``ivf``.
        hnsw_m: HNSW graph degree (memory ~ ``2 * hnsw_m`` ints per vector).
        ef_construction: HNSW build beam (build time grows about linearly with it).
        ef_search: HNSW query beam (recall vs latency).
        nlist: IVF clusters; ``None``: ``4 * sqrt(N)``, at most N / 39 so each cluster trains on 39 points.
        nprobe: IVF clusters scanned per query.
        train_size: IVF training sample (at most the gallery).
    """

    backend: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 16
    train_size: int = 100_000

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise RetrievalError(f"FAISS backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "train_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RetrievalError(f"FAISS option {name} must be a positive int, got {value!r}")
        if self.nlist is not None and (isinstance(self.nlist, bool) or not isinstance(self.nlist, int) or self.nlist < 1):
            raise RetrievalError(f"FAISS option nlist must be a positive int or None, got {self.nlist!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FaissOptions:
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def resolved_nlist(options: FaissOptions, n: int) -> int:
    if options.nlist is not None:
        return max(1, min(options.nlist, n))
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def _as_numpy(embeddings: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(embeddings.detach().to("cpu", torch.float32).numpy())


def build_faiss(embeddings: torch.Tensor, options: FaissOptions, fp16: bool = False, seed: int = 0) -> Any:
    """A CPU FAISS index over ``embeddings`` (N, D), inner-product metric, ready to search."""
    faiss = import_faiss()
    n, d = embeddings.shape
    if n == 0:
        raise RetrievalError("cannot build a FAISS index over an empty gallery")
    x = _as_numpy(embeddings)
    metric = faiss.METRIC_INNER_PRODUCT
    fp16_type = faiss.ScalarQuantizer.QT_fp16
    if options.backend == "flat":
        index = faiss.IndexScalarQuantizer(d, fp16_type, metric) if fp16 else faiss.IndexFlatIP(d)
    elif options.backend == "hnsw":
        index = faiss.IndexHNSWSQ(d, fp16_type, options.hnsw_m, metric) if fp16 else faiss.IndexHNSWFlat(d, options.hnsw_m, metric)
        index.hnsw.efConstruction = options.ef_construction
    else:
        nlist = resolved_nlist(options, n)
        quantizer = faiss.IndexFlatIP(d)
        if fp16:
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, fp16_type, metric)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        rows = rng.choice(n, size=min(n, options.train_size), replace=False) if n > options.train_size else np.arange(n)
        index.train(x[np.sort(rows)])
    index.add(x)
    configure(index, options)
    return index


def configure(index: Any, options: FaissOptions) -> None:
    """Set the query-time knobs (``ef_search``, ``nprobe``) on a built or loaded index."""
    faiss = import_faiss()
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = options.ef_search
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        ivf = None
    if ivf is not None:
        ivf.nprobe = options.nprobe


def faiss_search(index: Any, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores (Q, k), rows (Q, k))`` like :func:`exact_topk`; rows FAISS could not fill are dropped."""
    scores, rows = index.search(_as_numpy(queries), min(k, index.ntotal))
    return torch.from_numpy(scores), torch.from_numpy(rows).long()


def recall_at_k(approx_rows: torch.Tensor, exact_rows: torch.Tensor) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    k = exact_rows.shape[1]
    hits = (approx_rows.unsqueeze(2) == exact_rows.unsqueeze(1)).any(dim=1).sum().item()
    return hits / (exact_rows.shape[0] * k)


def sample_recall(index: Any, embeddings: torch.Tensor, k: int = 10, sample: int = 1000, seed: int = 0) -> tuple[float, int]:
    """recall@k of ``index`` against exact search, with ``sample`` gallery vectors as queries."""
    n = embeddings.shape[0]
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=generator)[: min(sample, n)]
    queries = embeddings[rows].float().cpu()
    k = min(k, n)
    _, exact_rows = exact_topk(queries, embeddings.cpu(), k)
    _, approx_rows = faiss_search(index, queries, k)
    return recall_at_k(approx_rows, exact_rows), int(rows.numel())


def faiss_file(backend: str) -> str:
    return f"faiss-{backend}.index"


def build_for_index(embeddings: torch.Tensor, options: FaissOptions, fp16: bool) -> tuple[Any, dict[str, Any]]:
    """Build, measure recall@10 on a sample, and return ``(index, manifest entry)``."""
    start = time.perf_counter()
    index = build_faiss(embeddings, options, fp16=fp16)
    build_seconds = time.perf_counter() - start
    recall, sampled = sample_recall(index, embeddings)
    entry = {
        "backend": options.backend,
        "file": faiss_file(options.backend),
        "options": options.to_dict(),
        "fp16": fp16,
        "ntotal": int(index.ntotal),
        "build_seconds": round(build_seconds, 3),
        "recall_at_10": round(recall, 4),
        "recall_sample": sampled,
    }
    if options.backend == "ivf":
        entry["nlist"] = resolved_nlist(options, embeddings.shape[0])
    return index, entry


def writer(index: Any):  # noqa: ANN201 - a writer for ctiir.retrieval.atomic.commit
    faiss = import_faiss()
    return lambda path: faiss.write_index(index, str(path))


def load_faiss(folder: Path, entry: dict[str, Any], count: int, dim: int, gpu: bool = False) -> Any:
    """Read the index's FAISS file and check it against the gallery it claims to index."""
    faiss = import_faiss()
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise RetrievalError(f"the manifest lists a FAISS index {path}, but the file is missing; rebuild with `ctiir index --faiss`")
    index = faiss.read_index(str(path))
    if index.ntotal != count or index.d != dim:
        raise RetrievalError(f"{path} indexes {index.ntotal} vectors of {index.d} dims; the gallery has {count} of {dim}")
    configure(index, FaissOptions.from_dict(entry["options"]))
    if gpu and entry["backend"] != "hnsw" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index
