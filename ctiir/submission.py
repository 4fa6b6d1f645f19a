"""CIRR test-server submissions: rankings, the two JSON files, and a schema check before anything is written.

The CIRR evaluation server scores the withheld test split from two files:

- ``recall_submission_<name>.json``: ``{"version": "rc2", "metric": "recall", "<pairid>": [50 names], ...}``
- ``recall_subset_submission_<name>.json``: ``{"version": "rc2", "metric": "recall_subset",
  "<pairid>": [3 names], ...}``

The rankings follow the evaluation protocol exactly: cosine scores, the reference removed from its query's
list (items below move up), the subset list ranked within ``img_set.members`` minus the reference, and ties
broken by gallery order so the files are reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ctiir.datamodules.tasks import collate_retrieval
from ctiir.fusion.base import as_fused
from ctiir.io import write_atomic
from ctiir.metrics.functional import nonfinite_rows
from ctiir.progress import encoding_progress

VERSION = "rc2"
LENGTHS = {"recall": 50, "recall_subset": 3}


class SubmissionError(ValueError):
    """A submission that the server would reject, or that would overwrite an existing file."""


def _stable_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Column positions of the top-``k`` scores per row; equal scores keep their column order."""
    return torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]


def cirr_rankings(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    reference_index: torch.Tensor,
    member_index: torch.Tensor,
    gallery_names: Sequence[str],
    k: int = 50,
    subset_k: int = 3,
    chunk_size: int = 1024,
) -> tuple[list[list[str]], list[list[str]]]:
    """(top-``k`` gallery names, top-``subset_k`` member names) per query, the reference removed from both.

    ``reference_index`` is (Q,) gallery positions (``-1``: the reference is not in the gallery);
    ``member_index`` is (Q, M) gallery positions of each query's image set, ``-1``-padded. Scores are dot
    products of the L2-normalised embeddings in float32; queries are processed ``chunk_size`` at a time so
    memory stays at ``chunk_size x G``.
    """
    if query_emb.ndim != 2 or gallery_emb.ndim != 2 or query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(
            f"embeddings must be (Q, D) and (G, D); got {tuple(query_emb.shape)} and {tuple(gallery_emb.shape)}"
        )
    num_q, num_g = query_emb.shape[0], gallery_emb.shape[0]
    if len(gallery_names) != num_g:
        raise ValueError(f"{len(gallery_names)} gallery names for {num_g} gallery embeddings")
    reference_index = torch.as_tensor(reference_index, dtype=torch.long).cpu()
    member_index = torch.as_tensor(member_index, dtype=torch.long).cpu()
    if reference_index.shape != (num_q,):
        raise ValueError(f"reference_index must be ({num_q},); got {tuple(reference_index.shape)}")
    if member_index.ndim != 2 or member_index.shape[0] != num_q:
        raise ValueError(f"member_index must be ({num_q}, M); got {tuple(member_index.shape)}")
    for name, index in (("reference_index", reference_index), ("member_index", member_index)):
        if index.numel() and (int(index.min()) < -1 or int(index.max()) >= num_g):
            raise IndexError(f"{name} holds a position outside -1..{num_g - 1}")
    if num_g - 1 < k:
        raise ValueError(f"the gallery has {num_g} images: too few for top-{k} lists without the reference")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for what, emb in (("gallery", gallery_emb), ("query", query_emb)):
        bad = nonfinite_rows(emb)
        if bad:
            first = bad[0]
            name = f" ({gallery_names[first]})" if what == "gallery" else ""
            raise ValueError(
                f"{what} embedding {first}{name} holds NaN or infinite values ({len(bad)} such rows); "
                "a submission ranked on them would be arbitrary"
            )
    gallery = F.normalize(gallery_emb.float(), dim=-1)
    positions = torch.arange(num_g, device=gallery.device)
    top: list[list[str]] = []
    top_subset: list[list[str]] = []
    for start in range(0, num_q, chunk_size):
        q = F.normalize(query_emb[start : start + chunk_size].float().to(gallery.device), dim=-1)
        ref = reference_index[start : start + chunk_size].to(gallery.device)
        scores = q @ gallery.T
        removed = positions[None, :] == ref[:, None]
        scores = scores.masked_fill(removed, float("-inf"))
        # Removed items score -inf, and every row has at least k others, so they never enter the top k.
        best = _stable_top(scores, k)
        top.extend([[gallery_names[i] for i in row] for row in best.tolist()])

        members = member_index[start : start + chunk_size].to(gallery.device)
        valid = (members >= 0) & (members != ref[:, None])
        short = (valid.sum(1) < subset_k).nonzero().flatten()
        if short.numel():
            raise ValueError(
                f"query {start + int(short[0])} has {int(valid[short[0]].sum())} members besides its reference; "
                f"need {subset_k} for the subset ranking"
            )
        # Put each row's members in gallery order (padding and the reference last), so ties follow it too.
        order = torch.argsort(torch.where(valid, members, torch.full_like(members, num_g)), dim=1, stable=True)
        members, valid = torch.gather(members, 1, order), torch.gather(valid, 1, order)
        member_scores = torch.gather(scores, 1, members.clamp(min=0)).masked_fill(~valid, float("-inf"))
        best_members = torch.gather(members, 1, _stable_top(member_scores, subset_k))
        top_subset.extend([[gallery_names[i] for i in row] for row in best_members.tolist()])
    return top, top_subset


def validate_cirr_submission(
    obj: Any,
    metric: str,
    gallery_names: Sequence[str] | None = None,
    *,
    references: Mapping[str, str] | None = None,
    members: Mapping[str, Sequence[str]] | None = None,
    pairids: Sequence[str] | None = None,
) -> None:
    """Raise ``SubmissionError`` naming the first defect the server would reject.

    Checks the version and metric, that keys are pairids (decimal strings), the exact list length (50 or 3),
    unique names, names in the gallery (when ``gallery_names`` is given), no query listing its own reference
    (``references``: pairid -> reference), subset names among the query's members (``members``) and, with
    ``pairids``, exactly those queries.
    """
    if metric not in LENGTHS:
        raise SubmissionError(f"metric must be one of {list(LENGTHS)}, got {metric!r}")
    if not isinstance(obj, dict):
        raise SubmissionError(f"a submission is a JSON object, got {type(obj).__name__}")
    if obj.get("version") != VERSION:
        raise SubmissionError(f"'version' must be {VERSION!r}, got {obj.get('version')!r}")
    if obj.get("metric") != metric:
        raise SubmissionError(f"'metric' must be {metric!r}, got {obj.get('metric')!r}")
    length = LENGTHS[metric]
    gallery = set(gallery_names) if gallery_names is not None else None
    keys = [key for key in obj if key not in ("version", "metric")]
    if not keys:
        raise SubmissionError(f"{metric} submission has no queries")
    for key in keys:
        if not isinstance(key, str) or not key.isdigit():
            raise SubmissionError(f"{metric} submission: key {key!r} is not a pairid")
        names = obj[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SubmissionError(
                f"{metric} submission, pairid {key}: expected a list of image names, got {names!r:.80}"
            )
        if len(names) != length:
            raise SubmissionError(f"{metric} submission, pairid {key}: {len(names)} names; expected exactly {length}")
        if len(set(names)) != len(names):
            raise SubmissionError(f"{metric} submission, pairid {key}: an image is listed twice")
        if gallery is not None:
            outside = [n for n in names if n not in gallery]
            if outside:
                raise SubmissionError(f"{metric} submission, pairid {key}: {outside[0]!r} is not in the gallery")
        if references is not None:
            if key not in references:
                raise SubmissionError(f"{metric} submission: pairid {key} is not a query of this split")
            if references[key] in names:
                raise SubmissionError(f"{metric} submission, pairid {key}: lists its own reference {references[key]!r}")
        if members is not None and metric == "recall_subset":
            if key not in members:
                raise SubmissionError(f"{metric} submission: pairid {key} is not a query of this split")
            outside = [n for n in names if n not in set(members[key])]
            if outside:
                raise SubmissionError(
                    f"{metric} submission, pairid {key}: {outside[0]!r} is not in the query's img_set"
                )
    if pairids is not None:
        missing = sorted(set(map(str, pairids)) - set(keys))
        extra = sorted(set(keys) - set(map(str, pairids)))
        if missing or extra:
            raise SubmissionError(
                f"{metric} submission: {len(missing)} queries missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})"
            )


def submission_paths(out_dir: str | Path, name: str = "ctiir") -> tuple[Path, Path]:
    """Where ``write_cirr_submission`` writes: the recall file and the recall_subset file."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise SubmissionError(f"submission name {name!r} must be a plain file-name part")
    out = Path(out_dir)
    return out / f"recall_submission_{name}.json", out / f"recall_subset_submission_{name}.json"


def write_cirr_submission(
    pairids: Sequence[int | str],
    top50: Sequence[Sequence[str]],
    top3: Sequence[Sequence[str]],
    out_dir: str | Path,
    name: str = "ctiir",
    *,
    gallery_names: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    members: Sequence[Sequence[str]] | None = None,
) -> tuple[Path, Path]:
    """Validate, then write both submission files; an existing file is never overwritten (``SubmissionError``).

    Each file is written atomically (``ctiir.io``), and if the second cannot be written the first is
    removed again, so a failed call leaves neither.

    ``references`` / ``members`` (per query, in ``pairids`` order) and ``gallery_names`` make the check
    stricter; pass them when you have them.
    """
    if not len(pairids) == len(top50) == len(top3):
        raise SubmissionError(
            f"{len(pairids)} pairids, {len(top50)} top-50 lists and {len(top3)} top-3 lists differ in number"
        )
    keys = [str(p) for p in pairids]
    if len(set(keys)) != len(keys):
        raise SubmissionError("a pairid is listed twice")
    ref_map = dict(zip(keys, references, strict=True)) if references is not None else None
    member_map = dict(zip(keys, members, strict=True)) if members is not None else None
    recall: dict[str, Any] = {
        "version": VERSION,
        "metric": "recall",
        **{k: list(v) for k, v in zip(keys, top50, strict=True)},
    }
    subset: dict[str, Any] = {
        "version": VERSION,
        "metric": "recall_subset",
        **{k: list(v) for k, v in zip(keys, top3, strict=True)},
    }
    for obj, metric in ((recall, "recall"), (subset, "recall_subset")):
        validate_cirr_submission(obj, metric, gallery_names, references=ref_map, members=member_map, pairids=keys)
    paths = submission_paths(out_dir, name)
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise SubmissionError(f"refusing to overwrite {', '.join(existing)}: choose another name or out_dir")
    written: list[Path] = []
    try:
        for path, obj in zip(paths, (recall, subset), strict=True):
            # Atomic, and never over a file (even one that appeared since the check above).
            written.append(write_atomic(path, json.dumps(obj), overwrite=False))
    except FileExistsError as err:
        _remove(written)
        raise SubmissionError(f"refusing to overwrite: {err}") from None
    except BaseException:
        _remove(written)  # both files or neither: a retry must not find half a submission in the way
        raise
    return paths


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _device(module: Any) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    params = list(module.parameters()) if hasattr(module, "parameters") else []
    return params[0].device if params else torch.device("cpu")


def _encode(
    encode: Any,
    dataset: Any,
    batch_size: int,
    num_workers: int,
    id_key: str,
    device: torch.device,
    progress: bool = False,
    what: str = "encoding",
) -> torch.Tensor:
    """Embeddings of every dataset item, in id order (whatever order the loader yields them)."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_retrieval
    )
    ids: list[torch.Tensor] = []
    embs: list[torch.Tensor] = []
    with encoding_progress(what, len(dataset), enabled=progress) as advance:
        for batch in loader:
            moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            ids.append(batch[id_key].cpu())
            embs.append(as_fused(encode(moved)).query.float().cpu())
            advance(len(ids[-1]))
    order = torch.cat(ids)
    if not torch.equal(order.sort().values, torch.arange(len(dataset))):
        raise RuntimeError(f"{id_key}s are not 0..{len(dataset) - 1}: the dataset is not a ctiir retrieval dataset")
    out = torch.empty(len(dataset), embs[0].shape[1])
    out[order] = torch.cat(embs)
    return out


def predict_cirr_submission(
    module: Any,
    datamodule: Any,
    out_dir: str | Path,
    name: str = "ctiir",
    split: str = "test",
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Encode the split's gallery and queries with ``module`` and write both submission files.

    Encoding runs on the module's device (move it first: ``ctiir cirr-submission --device``); ``progress``
    shows a bar per pass.

    ``module`` provides ``encode_gallery(batch)`` and ``encode_query(batch)`` on ``collate_retrieval``
    batches; ``datamodule`` is a ``CIRRDataModule``. A ctiir stage serves the datamodule in inference mode,
    so the images are preprocessed as its checkpoint records (a datamodule asking for another preprocessing
    gets a warning naming both); another module must come with a datamodule whose transforms are set. The
    module's training mode is restored afterwards.
    """
    data_request = getattr(module, "data_request", None)
    if data_request is not None:
        datamodule.serve(data_request(inference=True))
    elif datamodule.eval_transform is None:
        raise RuntimeError("the datamodule has no transforms and the module is no ctiir stage: call set_transforms first")
    evaluation = datamodule.submission_evaluation(split)
    if evaluation.skipped_queries or evaluation.skipped_gallery:
        raise SubmissionError(
            f"{evaluation.skipped_queries} queries and {evaluation.skipped_gallery} gallery images were skipped for "
            "missing images; the server needs every query: fix the data and use on_missing='error'"
        )
    task = datamodule.composed_task(evaluation)
    batch_size = batch_size or datamodule.eval_batch_size
    device = _device(module)
    was_training = bool(getattr(module, "training", False))
    if hasattr(module, "eval"):
        module.eval()
    try:
        with torch.no_grad():
            gallery = _encode(
                module.encode_gallery, task.gallery, batch_size, datamodule.num_workers, "gallery_id", device,
                progress, f"{split} gallery",
            )
            queries = _encode(
                module.encode_query, task.queries, batch_size, datamodule.num_workers, "query_id", device,
                progress, f"{split} queries",
            )
    finally:
        if was_training and hasattr(module, "train"):
            module.train()
    resolved = evaluation.queries
    ref_index = torch.tensor([r.reference_index for r in resolved], dtype=torch.long)
    width = evaluation.member_width
    member_index = torch.tensor(
        [list(r.member_indices) + [-1] * (width - len(r.member_indices)) for r in resolved], dtype=torch.long
    )
    top50, top3 = cirr_rankings(queries, gallery, ref_index, member_index, evaluation.gallery_names)
    return write_cirr_submission(
        evaluation.query_names,
        top50,
        top3,
        out_dir,
        name,
        gallery_names=evaluation.gallery_names,
        references=[r.query.reference_id for r in resolved],
        members=[r.query.members for r in resolved],
    )
