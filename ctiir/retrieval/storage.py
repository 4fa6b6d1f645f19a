"""The gallery index on disk, and every check made when it is loaded.

An index is one folder::

    embeddings.safetensors   the (count, dim) float16 or float32 embeddings, L2-normalised, row i = ids[i]
    ids.json                 the gallery ids: image paths relative to the images root (or a dataset's names)
    sources.json             per id: the file (relative to ``root``), its size and mtime, for ``--update``
    manifest.json            what built it (checkpoint sha256, backbone spec, preprocessing) and the hashes
    faiss-<backend>.index    optional approximate-search index (see ``ann.py``)

All files are replaced together by :func:`ctiir.retrieval.atomic.commit`. Loading checks that the files agree
with each other and with the manifest; :func:`check_compatible` checks that they agree with a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ctiir.metrics.functional import nonfinite_rows
from ctiir.retrieval.atomic import commit, pending_commit, recover
from ctiir.retrieval.errors import IndexCorruptError, IndexMismatchError, RetrievalError
from ctiir.retrieval.model import file_sha256

FORMAT = "ctiir-gallery-index"
FORMAT_VERSION = 1
EMBEDDINGS = "embeddings.safetensors"
IDS = "ids.json"
SOURCES = "sources.json"
MANIFEST = "manifest.json"
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def describe_rows(rows: list[int], names: list[str], noun: str = "row", shown: int = 5) -> str:
    """``"3 rows (a.png, b.png, c.png)"``: a short listing of ``names[rows]`` for an error message."""
    listed = ", ".join(names[r] for r in rows[:shown]) + (", ..." if len(rows) > shown else "")
    return f"{len(rows)} {noun}{'s' if len(rows) != 1 else ''} ({listed})"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Sources:
    """Where each gallery item's image lives, with the size and mtime that ``--update`` compares."""

    root: str
    paths: list[str]
    size: list[int]
    mtime_ns: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "paths": self.paths, "size": self.size, "mtime_ns": self.mtime_ns}

    def select(self, rows: list[int]) -> Sources:
        return Sources(self.root, [self.paths[i] for i in rows], [self.size[i] for i in rows], [self.mtime_ns[i] for i in rows])


@dataclass
class GalleryIndex:
    """A loaded index: ``embeddings[i]`` is the embedding of ``ids[i]``, whose image is ``image_path(i)``."""

    folder: Path
    manifest: dict[str, Any]
    ids: list[str]
    embeddings: torch.Tensor
    sources: Sources

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def image_path(self, row: int) -> Path:
        return Path(self.sources.root) / self.sources.paths[row]

    def position(self, gallery_id: str) -> int:
        """The row of ``gallery_id``; a ``KeyError`` naming it when the index does not hold it."""
        lookup = getattr(self, "_positions", None)
        if lookup is None:
            lookup = {name: i for i, name in enumerate(self.ids)}
            self._positions = lookup
        if gallery_id not in lookup:
            raise KeyError(f"{gallery_id!r} is not in the index {self.folder}")
        return lookup[gallery_id]


def make_manifest(
    *,
    ckpt: str | Path,
    ckpt_sha256: str,
    backbone: dict[str, Any],
    preprocessing: dict[str, Any] | None,
    dim: int,
    count: int,
    dtype: str,
    source: dict[str, Any],
    skipped: list[str],
) -> dict[str, Any]:
    """The manifest's fields that do not depend on the written bytes (the hashes are added by ``save_index``)."""
    from ctiir import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ctiir_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(ckpt), "sha256": ckpt_sha256},
        "backbone": backbone,
        "preprocessing": preprocessing,
        "dim": int(dim),
        "count": int(count),
        "dtype": dtype,
        "source": source,
        "skipped": skipped,
        "faiss": None,
    }


def save_index(
    folder: str | Path,
    manifest: dict[str, Any],
    ids: list[str],
    embeddings: torch.Tensor,
    sources: Sources,
    extra_files: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write (or replace) the whole index atomically; returns the manifest as written.

    ``extra_files`` maps further file names to writers (a FAISS index); index files that the new manifest
    no longer lists (a FAISS index of an earlier build) are removed in the same commit.
    """
    folder = Path(folder)
    dtype = manifest["dtype"]
    if dtype not in DTYPES:
        raise RetrievalError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids) or len(sources.paths) != len(ids):
        raise RetrievalError(
            f"index {folder}: {tuple(embeddings.shape)} embeddings, {len(ids)} ids and {len(sources.paths)} sources disagree"
        )
    if len(set(ids)) != len(ids):
        raise RetrievalError(f"index {folder}: gallery ids must be unique")
    bad = nonfinite_rows(embeddings)
    if bad:
        raise RetrievalError(f"index {folder}: not written: NaN or infinite embeddings in {describe_rows(bad, ids)}")
    data = embeddings.detach().to("cpu", DTYPES[dtype]).contiguous()
    ids_bytes = _json_bytes(ids)
    sources_bytes = _json_bytes(sources.to_dict())
    written: dict[str, str] = {}

    def write_embeddings(path: Path) -> None:
        save_file({"embeddings": data}, str(path), metadata={"format": FORMAT})
        path.chmod(0o644)  # safetensors creates it owner-only; an index is read by servers under other users
        written["sha256"] = file_sha256(path)

    def write_bytes(payload: bytes):  # noqa: ANN202 - a small closure factory
        return lambda path: path.write_bytes(payload)

    manifest = {
        **manifest,
        "count": len(ids),
        "dim": int(data.shape[1]),
        "ids_sha256": _sha256(ids_bytes),
        "sources_sha256": _sha256(sources_bytes),
    }
    writers = {EMBEDDINGS: write_embeddings, IDS: write_bytes(ids_bytes), SOURCES: write_bytes(sources_bytes)}
    writers.update(extra_files or {})

    # The manifest holds the embeddings' hash, known only once they are written: it is written last.
    def manifest_after(path: Path) -> None:
        manifest["embeddings_sha256"] = written["sha256"]
        path.write_bytes(_json_bytes(manifest))

    writers[MANIFEST] = manifest_after
    stale = [p.name for p in folder.glob("faiss-*.index")] if folder.is_dir() else []
    commit(folder, writers, remove=stale)
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise RetrievalError(f"index {folder} not found")
    if pending_commit(folder):
        try:
            recover(folder)
        except OSError as err:
            raise IndexCorruptError(f"index {folder} has an unfinished write that could not be completed: {err}") from err
    if not path.is_file():
        raise RetrievalError(f"{folder} is not a ctiir index (no {MANIFEST}); build one with `ctiir index`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise IndexCorruptError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{path}: not a ctiir index manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexCorruptError(
            f"{path}: index format version {manifest.get('format_version')!r}; this ctiir reads version {FORMAT_VERSION}"
        )
    missing = [k for k in ("count", "dim", "dtype", "backbone", "checkpoint", "embeddings_sha256", "ids_sha256") if k not in manifest]
    if missing:
        raise IndexCorruptError(f"{path}: missing keys {missing}")
    if manifest["dtype"] not in DTYPES:
        raise IndexCorruptError(f"{path}: dtype {manifest['dtype']!r} is not one of {sorted(DTYPES)}")
    return manifest


def _read_json(path: Path, expected_sha: str | None, what: str) -> Any:
    if not path.is_file():
        raise IndexCorruptError(f"index file {path} is missing")
    data = path.read_bytes()
    if expected_sha is not None and _sha256(data) != expected_sha:
        raise IndexCorruptError(f"{path}: sha256 does not match the manifest's {what}_sha256; the file was changed after the index was written")
    try:
        return json.loads(data)
    except ValueError as err:
        raise IndexCorruptError(f"{path}: not valid JSON ({err})") from err


def load_index(folder: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> GalleryIndex:
    """Load an index and check it: file hashes (``verify``), counts, shapes and dtype, each a clear error."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    count, dim = int(manifest["count"]), int(manifest["dim"])
    ids = _read_json(folder / IDS, manifest["ids_sha256"], "ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IndexCorruptError(f"{folder / IDS}: expected a JSON list of strings")
    if len(ids) != count:
        raise IndexCorruptError(f"{folder / IDS} holds {len(ids)} ids but {folder / MANIFEST} says count={count}")
    raw = _read_json(folder / SOURCES, manifest.get("sources_sha256"), "sources")
    try:
        sources = Sources(str(raw["root"]), list(raw["paths"]), [int(s) for s in raw["size"]], [int(m) for m in raw["mtime_ns"]])
    except (KeyError, TypeError, ValueError) as err:
        raise IndexCorruptError(f"{folder / SOURCES}: expected root, paths, size and mtime_ns ({err})") from err
    if not len(sources.paths) == len(sources.size) == len(sources.mtime_ns) == count:
        raise IndexCorruptError(f"{folder / SOURCES} does not hold one entry per id ({count} ids)")
    emb_path = folder / EMBEDDINGS
    if not emb_path.is_file():
        raise IndexCorruptError(f"index file {emb_path} is missing")
    if verify and file_sha256(emb_path) != manifest["embeddings_sha256"]:
        raise IndexCorruptError(
            f"{emb_path}: sha256 does not match the manifest's embeddings_sha256; the embeddings were changed after "
            "the index was written (rebuild it with `ctiir index`)"
        )
    try:
        tensors = load_file(str(emb_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise IndexCorruptError(f"{emb_path}: unreadable safetensors file ({err})") from err
    embeddings = tensors.get("embeddings")
    if embeddings is None:
        raise IndexCorruptError(f"{emb_path}: no 'embeddings' tensor (found {sorted(tensors)})")
    if tuple(embeddings.shape) != (count, dim):
        raise IndexCorruptError(
            f"{emb_path} holds {tuple(embeddings.shape)} embeddings but the manifest says ({count}, {dim}) "
            f"and {folder / IDS} holds {len(ids)} ids"
        )
    if embeddings.dtype != DTYPES[manifest["dtype"]]:
        raise IndexCorruptError(f"{emb_path}: dtype {embeddings.dtype}, the manifest says {manifest['dtype']}")
    bad = nonfinite_rows(embeddings)
    if bad:
        raise IndexCorruptError(
            f"{emb_path}: NaN or infinite embeddings in {describe_rows(bad, ids)}; searching them would rank them "
            "first for every query (rebuild the index with `ctiir index`)"
        )
    return GalleryIndex(folder, manifest, ids, embeddings, sources)


def check_compatible(
    manifest: dict[str, Any],
    *,
    folder: Path,
    backbone: dict[str, Any],
    dim: int,
    ckpt_sha256: str | None,
    ckpt: str | Path | None = None,
) -> None:
    """The index must come from this model: the same backbone architecture, dimension and checkpoint.

    Embeddings of another model live in another space; searching them would return confident nonsense.
    """
    from ctiir.stages.base import architecture  # here, not at the top: it imports Lightning

    theirs = architecture(manifest["backbone"])
    ours = architecture(backbone)
    if theirs != ours:
        raise IndexMismatchError(f"index {folder} was built with backbone {theirs}, but the model uses {ours}")
    if int(manifest["dim"]) != int(dim):
        raise IndexMismatchError(f"index {folder} holds {manifest['dim']}-d embeddings, but the model makes {dim}-d ones")
    if ckpt_sha256 is not None:
        check_checkpoint(manifest, folder=folder, ckpt_sha256=ckpt_sha256, ckpt=ckpt)


def check_checkpoint(manifest: dict[str, Any], *, folder: Path, ckpt_sha256: str, ckpt: str | Path | None = None) -> None:
    """The index must come from this very checkpoint (by sha256); the error names both checkpoints.

    Checked by itself (before any model is loaded) where a mismatch should stop a command early.
    """
    built = manifest["checkpoint"]
    if built.get("sha256") == ckpt_sha256:
        return
    this = f"{ckpt} " if ckpt is not None else "this one "
    raise IndexMismatchError(
        f"index {folder} was built from checkpoint {built.get('path')} (sha256 {str(built.get('sha256'))[:12]}...), "
        f"not from {this}(sha256 {ckpt_sha256[:12]}...); search it with the checkpoint that built it, "
        "or rebuild the index with this checkpoint"
    )
