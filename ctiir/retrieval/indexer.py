"""Building and updating a gallery index: scan, plan, encode (Lightning ``predict``), save, FAISS.

Unreadable images are skipped and reported by path with a count (``strict=True`` refuses them instead),
so one bad file in a million does not stop an overnight indexing run, and none is dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ctiir.metrics.functional import nonfinite_rows
from ctiir.retrieval import ann
from ctiir.retrieval.encode import encode_dataset
from ctiir.retrieval.errors import RetrievalError, UnreadableImagesError
from ctiir.retrieval.model import (
    backbone_spec,
    embed_dim,
    eval_transform,
    file_sha256,
    load_stage,
    preprocessing_record,
)
from ctiir.retrieval.scan import GalleryFile, ImageFiles, dataset_files, scan_folder
from ctiir.retrieval.storage import (
    DTYPES,
    GalleryIndex,
    Sources,
    check_compatible,
    describe_rows,
    load_index,
    make_manifest,
    read_manifest,
    save_index,
)
from ctiir.retrieval.update import UpdatePlan, plan_update

log = logging.getLogger(__name__)
SHARD_DIR = ".encode-shards"


@dataclass
class IndexReport:
    """What a build did: the counts, the skipped images with their errors, and the FAISS entry if any."""

    folder: Path
    count: int
    encoded: int
    plan: UpdatePlan
    skipped: dict[str, str] = field(default_factory=dict)
    faiss: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def build_index(
    ckpt: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    data: Any = None,
    task: str | None = None,
    update: bool = False,
    strict: bool = False,
    dtype: str | None = None,
    faiss: ann.FaissOptions | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    trainer_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    module: Any = None,
) -> IndexReport | None:
    """Encode ``images`` (a folder) or ``data``'s gallery (a datamodule) with ``ckpt`` into the index ``out``.

    ``update=True`` keeps the embeddings of unchanged images of the existing index and encodes only the new
    and changed ones. Returns the report on rank 0, ``None`` on other ranks of a distributed run.
    """
    if (images is None) == (data is None):
        raise RetrievalError("give exactly one of --images (a folder) and --dataset (a datamodule config)")
    out = Path(out)
    ckpt = Path(ckpt)
    if module is None:
        module = load_stage(ckpt)
    ckpt_sha = file_sha256(ckpt)
    transform = eval_transform(module)
    old: GalleryIndex | None = None
    if update:
        if not (out / "manifest.json").is_file():
            raise RetrievalError(f"--update: {out} holds no index to update; build one first without --update")
        manifest = read_manifest(out)
        check_compatible(manifest, folder=out, backbone=backbone_spec(module), dim=embed_dim(module), ckpt_sha256=ckpt_sha, ckpt=ckpt)
        if dtype is not None and dtype != manifest["dtype"]:
            raise RetrievalError(f"--dtype {dtype}: the index at {out} is {manifest['dtype']}; an update keeps its dtype")
        dtype = manifest["dtype"]
        old = load_index(out)
        if faiss is None and manifest.get("faiss"):
            faiss = ann.FaissOptions.from_dict(manifest["faiss"]["options"])
    elif (out / "manifest.json").is_file():
        log.info("replacing the index at %s", out)
    dtype = dtype or "float16"
    if dtype not in DTYPES:
        raise RetrievalError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")

    if images is not None:
        root = Path(images).resolve()
        files = scan_folder(root)
        source: dict[str, Any] = {"kind": "folder", "root": str(root)}
    else:
        root, files = dataset_files(data, task)
        source = {"kind": "dataset", "datamodule": type(data).__name__, "task": task, "root": str(root)}
    if old is not None and Path(old.sources.root) != root:
        raise RetrievalError(f"--update: the index at {out} was built from {old.sources.root}, not {root}; build a new index instead")
    if not files:
        raise RetrievalError(f"no images (jpg, jpeg, png, webp) found under {root}")
    plan = plan_update(old, files)

    dim = embed_dim(module)
    fresh = torch.zeros(0, dim)
    errors: dict[int, str] = {}
    if plan.encode:
        to_encode = [files[r] for r in plan.encode]
        result = encode_dataset(
            module,
            ImageFiles(root, to_encode, transform),
            out / SHARD_DIR,
            batch_size=batch_size,
            num_workers=num_workers,
            trainer_kwargs=trainer_kwargs,
            progress=progress,
        )
        if result is None:  # another rank of a distributed run: rank 0 writes the index
            return None
        fresh, errors = result
        nonfinite = [r for r in nonfinite_rows(fresh) if r not in errors]
        if nonfinite:
            names = [str(root / files[r].path) for r in plan.encode]
            raise RetrievalError(
                f"checkpoint {ckpt} gave NaN or infinite embeddings for {describe_rows(nonfinite, names, 'image')} out of "
                f"{len(plan.encode)}; nothing was written to {out} (does the checkpoint hold NaN weights, from a diverged training?)"
            )
    skipped = {str(root / files[plan.encode[i]].path): msg for i, msg in sorted(errors.items())}
    if skipped:
        listing = "\n".join(f"  {msg}" for msg in skipped.values())  # each message names its file
        if strict:
            raise UnreadableImagesError(f"{len(skipped)} unreadable images (--strict):\n{listing}")
        log.warning("skipped %d unreadable images:\n%s", len(skipped), listing)

    failed_rows = {plan.encode[i] for i in errors}
    fresh_row = {new_row: i for i, new_row in enumerate(plan.encode)}
    kept_files: list[GalleryFile] = []
    rows: list[torch.Tensor] = []
    for new_row, f in enumerate(files):
        if new_row in failed_rows:
            continue
        if new_row in plan.keep:
            assert old is not None
            rows.append(old.embeddings[plan.keep[new_row]].float())
        else:
            rows.append(fresh[fresh_row[new_row]])
        kept_files.append(f)
    if not kept_files:
        raise RetrievalError(f"none of the {len(files)} images under {root} could be read")
    # Converted to the stored dtype once: FAISS is built from, and save_index writes, this very tensor.
    embeddings = F.normalize(torch.stack(rows), dim=-1).to("cpu", DTYPES[dtype])
    manifest = make_manifest(
        ckpt=ckpt.resolve(),
        ckpt_sha256=ckpt_sha,
        backbone=backbone_spec(module),
        preprocessing=preprocessing_record(module),
        dim=dim,
        count=len(kept_files),
        dtype=dtype,
        source=source,
        skipped=sorted(skipped),
    )
    extra: dict[str, Any] = {}
    if faiss is not None:
        index, entry = ann.build_for_index(embeddings, faiss, fp16=dtype == "float16")
        extra[entry["file"]] = ann.writer(index)
        manifest["faiss"] = entry
        log.info("FAISS %s: recall@10 %.4f vs exact on %d gallery vectors", entry["backend"], entry["recall_at_10"], entry["recall_sample"])
    ids = [f.id for f in kept_files]
    sources = Sources(str(root), [f.path for f in kept_files], [f.size for f in kept_files], [f.mtime_ns for f in kept_files])
    written = save_index(out, manifest, ids, embeddings, sources, extra_files=extra)
    return IndexReport(out, len(ids), len(plan.encode) - len(errors), plan, skipped, manifest.get("faiss"), written)
