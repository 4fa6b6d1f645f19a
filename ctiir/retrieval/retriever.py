"""``Retriever``: a model and its gallery index, answering image, text and image+text queries.

Queries are encoded with the checkpoint's own transform and fusion, ranked by exact search (chunked
matmul, on the index's device) or by the index's FAISS index, and returned with the fusion's modality
weights where it has them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ctiir.datamodules.errors import DataError
from ctiir.datamodules.images import bomb_refusal, load_rgb, refusal, to_rgb
from ctiir.metrics.functional import nonfinite_rows
from ctiir.retrieval import ann
from ctiir.retrieval.errors import QueryError, RetrievalError
from ctiir.retrieval.exact import exact_topk
from ctiir.retrieval.model import backbone_spec, embed_dim, eval_transform, file_sha256, load_stage, query_embeddings
from ctiir.retrieval.storage import GalleryIndex, check_compatible, load_index

ImageInput = str | Path | Image.Image | torch.Tensor | bytes
BACKENDS = ("exact", "faiss")


@dataclass
class SearchResult:
    """One query's ranked gallery items, best first; ``weights`` is ``(w_img, w_txt)`` or ``None``."""

    ids: list[str]
    scores: list[float]
    rows: list[int]
    weights: tuple[float, float] | None
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        weights = None if self.weights is None else {"image": self.weights[0], "text": self.weights[1]}
        return {
            "text": self.text,
            "weights": weights,
            "results": [{"rank": r + 1, "id": i, "score": s} for r, (i, s) in enumerate(zip(self.ids, self.scores, strict=True))],
        }

    def rank_of(self, gallery_id: str) -> int | None:
        """The 1-based rank of ``gallery_id`` in these results, or ``None`` when it is not in them."""
        return self.ids.index(gallery_id) + 1 if gallery_id in self.ids else None


def open_image(image: ImageInput, what: str = "query image") -> Image.Image:
    """A path, raw bytes, a PIL image or a uint8 tensor as an RGB PIL image; a ``QueryError`` if unreadable.

    Paths, bytes and PIL images go through the same checks and conversion (``load_rgb``'s pixel limit and
    ``to_rgb``: transparency over white, 16-bit scaled), so one image gives one embedding however it arrives.
    """
    if isinstance(image, Image.Image):
        reason = refusal(image)
        if reason is None:
            try:
                return to_rgb(image)
            except ValueError as err:
                reason = str(err)
        raise QueryError(f"{what}: {reason}")
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as img:
                reason = refusal(img)
                if reason is None:
                    img.load()
                    return to_rgb(img)
        except Image.DecompressionBombError as err:  # over twice the limit: Pillow refuses at open
            reason = bomb_refusal(err)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise QueryError(f"{what}: the {len(image)} bytes are not a readable image ({type(err).__name__})") from err
        raise QueryError(f"{what}: {reason}")
    if isinstance(image, (str, Path)):
        try:
            return load_rgb(image, what)
        except DataError as err:
            raise QueryError(str(err)) from err
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
        chw = image if image.shape[0] in (1, 3) else image.permute(2, 0, 1)
        return Image.fromarray(chw.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy())
    raise QueryError(f"{what}: expected a path, bytes, a PIL image or a tensor, got {type(image).__name__}")


class Retriever:
    """Search a gallery index with the model that built it.

    Args:
        module: a ctiir stage (eval mode).
        index: the loaded ``GalleryIndex``; it must come from ``module``'s checkpoint (checked when
            ``ckpt_sha256`` is given, as ``from_checkpoint`` does; ``ckpt``, its path, names it in the error).
        backend: ``"exact"`` (chunked matmul) or ``"faiss"`` (the index's saved FAISS index).
        max_chunk_bytes: memory bound of exact search's temporaries.
    """

    def __init__(
        self,
        module: Any,
        index: GalleryIndex,
        *,
        ckpt_sha256: str | None = None,
        ckpt: str | Path | None = None,
        backend: str = "exact",
        max_chunk_bytes: int = 32 << 20,
        faiss_gpu: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise RetrievalError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_compatible(
            index.manifest, folder=index.folder, backbone=backbone_spec(module), dim=embed_dim(module), ckpt_sha256=ckpt_sha256, ckpt=ckpt
        )
        self.module = module.eval()
        self.index = index
        self.backend = backend
        self.max_chunk_bytes = max_chunk_bytes
        self.transform = eval_transform(module)
        self.faiss_index = None
        if backend == "faiss":
            entry = index.manifest.get("faiss")
            if not entry:
                raise RetrievalError(f"index {index.folder} has no FAISS index; build it with `ctiir index --faiss hnsw` or use backend='exact'")
            self.faiss_index = ann.load_faiss(index.folder, entry, len(index), index.dim, gpu=faiss_gpu)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: str | Path,
        index: str | Path,
        *,
        device: str | torch.device = "cpu",
        index_device: str | torch.device | None = None,
        backend: str = "exact",
        verify: bool = True,
        ckpt_sha256: str | None = None,
        **kwargs: Any,
    ) -> Retriever:
        """Load the checkpoint and its index (on ``index_device``, default ``device``) and check they match.

        ``ckpt_sha256``: the checkpoint file's sha256 when the caller has already computed it (it is hashed here
        otherwise).
        """
        module = load_stage(ckpt, device)
        loaded = load_index(index, device=index_device or device, verify=verify)
        if ckpt_sha256 is None:
            ckpt_sha256 = file_sha256(ckpt)
        return cls(module, loaded, ckpt_sha256=ckpt_sha256, ckpt=ckpt, backend=backend, **kwargs)

    # ------------------------------------------------------------------------------------------ queries
    def _image_tensor(self, image: ImageInput) -> torch.Tensor:
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            if image.ndim != 3:
                raise QueryError(f"a float image tensor must be one preprocessed (3, H, W) image, got shape {tuple(image.shape)}")
            if not bool(torch.isfinite(image).all()):
                raise QueryError("the float image tensor holds NaN or infinite values")
            return image  # already through the model's transform, like a dataset item
        return self.transform(open_image(image))

    def check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self.index):
            raise QueryError(f"k must be an int from 1 to the gallery size {len(self.index)}, got {k!r}")
        return k

    @torch.no_grad()
    def encode(self, images: Sequence[ImageInput | None], texts: Sequence[str | None]) -> tuple[torch.Tensor, list[tuple[float, float] | None]]:
        """Query embeddings (Q, D) and per-query weights; queries are grouped by modality and encoded in batches.

        Each query must hold an image or a non-blank text (``search_batch`` checks that first).
        """
        if len(images) != len(texts):
            raise QueryError(f"{len(images)} images and {len(texts)} texts: give one of each per query (None to omit)")
        device = self.module.device
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, (image, text) in enumerate(zip(images, texts, strict=True)):
            if text is not None and not isinstance(text, str):
                raise QueryError(f"query {i}: text must be a string, got {type(text).__name__}")
            has_text = text is not None and text.strip() != ""
            groups.setdefault((image is not None, has_text), []).append(i)
        out = torch.empty(len(images), embed_dim(self.module))
        weights: list[tuple[float, float] | None] = [None] * len(images)
        for (has_image, has_text), rows in groups.items():
            batch: dict[str, Any] = {}
            if has_image:
                batch["image"] = torch.stack([self._image_tensor(images[i]) for i in rows]).to(device)
            if has_text:
                batch["text"] = [str(texts[i]) for i in rows]
            query, w = query_embeddings(self.module, batch)
            out[rows] = query.cpu()
            if w is not None:
                for j, i in enumerate(rows):
                    weights[i] = (float(w[j, 0]), float(w[j, 1]))
        return out, weights

    def rank(self, queries: torch.Tensor, k: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, rows)`` (Q, k) for query embeddings, by the chosen backend.

        A query embedding with a NaN or an infinity is an error (``first`` numbers the queries in it), never a
        ranking: ``torch.topk`` and FAISS would order the gallery arbitrarily for it. ``k`` must have passed
        ``check_k`` (``search_batch`` checks it once for all batches).
        """
        bad = nonfinite_rows(queries)
        if bad:
            numbers = ", ".join(str(first + r) for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise QueryError(
                f"the model gave a NaN or infinite embedding for {len(bad)} of {queries.shape[0]} queries (query {numbers}); "
                "nothing was searched (does the checkpoint hold NaN weights?)"
            )
        if self.faiss_index is not None:
            return ann.faiss_search(self.faiss_index, queries, k)
        scores, rows = exact_topk(queries, self.index.embeddings, k, self.max_chunk_bytes)
        return scores.cpu(), rows.cpu()

    def search(self, image: ImageInput | None = None, text: str | None = None, k: int = 10) -> SearchResult:
        """Rank the gallery for one query: an image, a text, or both (a composed query)."""
        return self.search_batch([image], [text], k=k)[0]

    def search_batch(
        self,
        images: Sequence[ImageInput | None] | None = None,
        texts: Sequence[str | None] | None = None,
        k: int = 10,
        batch_size: int = 64,
    ) -> list[SearchResult]:
        """Rank the gallery for many queries; ``None`` in either list omits that modality for that query."""
        if images is None and texts is None:
            raise QueryError("search_batch needs images and/or texts")
        n = len(images) if images is not None else len(texts or [])
        images = list(images) if images is not None else [None] * n
        texts = list(texts) if texts is not None else [None] * n
        for i, (image, text) in enumerate(zip(images, texts, strict=False)):
            if image is None and not (isinstance(text, str) and text.strip()):
                raise QueryError(f"query {i}: give an image, a text, or both")
        self.check_k(k)
        results: list[SearchResult] = []
        for start in range(0, n, batch_size):
            queries, weights = self.encode(images[start : start + batch_size], texts[start : start + batch_size])
            scores, rows = self.rank(queries, k, first=start)
            for j in range(queries.shape[0]):
                r = [int(x) for x in rows[j] if int(x) >= 0]
                results.append(
                    SearchResult(
                        ids=[self.index.ids[x] for x in r],
                        scores=[float(s) for s in scores[j][: len(r)]],
                        rows=r,
                        weights=weights[j],
                        text=texts[start + j],
                    )
                )
        return results
