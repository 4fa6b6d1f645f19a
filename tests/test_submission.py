"""CIRR submissions: rankings against brute force, the schema check, never overwriting, and the end-to-end
writer with a tiny fake module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from ctiir.datamodules.cirr import CIRRDataModule
from ctiir.submission import (
    SubmissionError,
    cirr_rankings,
    predict_cirr_submission,
    submission_paths,
    validate_cirr_submission,
    write_cirr_submission,
)

TF = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def exact_unit_vectors(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """Rows with four entries of +-0.5: unit norm exactly, and every dot product (a multiple of 0.25) is
    exact in float32 whatever the summation order, so ties are real ties."""
    out = torch.zeros(n, dim)
    for row in out:
        idx = torch.randperm(dim, generator=gen)[:4]
        row[idx] = torch.where(torch.rand(4, generator=gen) < 0.5, -0.5, 0.5)
    return out


def brute_force(queries, gallery, refs, members, k, subset_k):
    """Sort every gallery position by (-score, position), drop the reference; same within the members."""
    scores = queries @ gallery.T
    top, sub = [], []
    for q in range(queries.shape[0]):
        order = sorted(range(gallery.shape[0]), key=lambda g, q=q: (-float(scores[q, g]), g))
        order = [g for g in order if g != int(refs[q])]
        top.append(order[:k])
        group = sorted(
            (int(m) for m in members[q] if m >= 0 and m != refs[q]), key=lambda g, q=q: (-float(scores[q, g]), g)
        )
        sub.append(group[:subset_k])
    return top, sub


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_rankings_match_brute_force_with_ties(chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    gallery = exact_unit_vectors(60, 12, gen)
    gallery[10:20] = gallery[0]  # exact duplicates: many tied scores
    queries = exact_unit_vectors(9, 12, gen)
    queries[0] = gallery[0]  # the reference's own twin ranks first unless removed
    refs = torch.tensor([0, 3, -1, 59, 12, 5, 6, 7, 8])
    members = torch.randint(0, 60, (9, 6), generator=gen)
    members[:, 0] = refs.clamp(min=0)
    members[2, 5] = -1
    members = torch.stack(
        [torch.tensor(list(dict.fromkeys(r.tolist())) + [-1] * (6 - len(set(r.tolist())))) for r in members]
    )
    names = [f"img{i}" for i in range(60)]
    top, sub = cirr_rankings(queries, gallery, refs, members, names, k=50, subset_k=3, chunk_size=chunk_size)
    expected_top, expected_sub = brute_force(queries, gallery, refs, members, 50, 3)
    assert top == [[names[g] for g in row] for row in expected_top]
    assert sub == [[names[g] for g in row] for row in expected_sub]
    assert all(names[int(r)] not in row for r, row in zip(refs, top, strict=True) if r >= 0)
    # query 0 scores 1.0 on its reference and its ten twins: the twins lead, in gallery order
    assert top[0][:10] == names[10:20]


def test_rankings_input_errors() -> None:
    g = F.normalize(torch.randn(10, 4), dim=-1)
    q = F.normalize(torch.randn(2, 4), dim=-1)
    members = torch.tensor([[0, 1, 2, 3], [4, 5, 6, -1]])
    with pytest.raises(ValueError, match="too few for top-10"):
        cirr_rankings(q, g, torch.tensor([0, 4]), members, [str(i) for i in range(10)], k=10)
    with pytest.raises(ValueError, match="query 1 has 2 members besides its reference"):
        cirr_rankings(q, g, torch.tensor([0, 4]), members, [str(i) for i in range(10)], k=5)
    with pytest.raises(ValueError, match="9 gallery names for 10"):
        cirr_rankings(q, g, torch.tensor([0, 4]), members, [str(i) for i in range(9)], k=5)
    with pytest.raises(IndexError, match="reference_index holds a position outside"):
        cirr_rankings(q, g, torch.tensor([0, 10]), members, [str(i) for i in range(10)], k=5)
    with pytest.raises(ValueError, match="NaN"):
        cirr_rankings(q * float("nan"), g, torch.tensor([0, 4]), members, [str(i) for i in range(10)], k=5)


# ---------------------------------------------------------------------------------------------- schema
GALLERY = [f"g{i}" for i in range(60)]


def valid(metric: str) -> dict:
    n = 50 if metric == "recall" else 3
    return {"version": "rc2", "metric": metric, "1": GALLERY[1 : n + 1], "2": GALLERY[2 : n + 2]}


REFS = {"1": "g0", "2": "g0"}
MEMBERS = {"1": GALLERY[:6], "2": GALLERY[:6]}
DEFECTS = [
    ("recall", lambda o: o.update(version="rc1"), "'version' must be 'rc2'"),
    ("recall", lambda o: o.update(metric="recall_subset"), "'metric' must be 'recall'"),
    ("recall", lambda o: o.update(x=GALLERY[:50]), "key 'x' is not a pairid"),
    ("recall", lambda o: o.update({"1": GALLERY[1:50]}), "pairid 1: 49 names; expected exactly 50"),
    ("recall_subset", lambda o: o.update({"2": GALLERY[1:5]}), "pairid 2: 4 names; expected exactly 3"),
    ("recall", lambda o: o.update({"1": GALLERY[1:50] + ["g1"]}), "pairid 1: an image is listed twice"),
    ("recall", lambda o: o.update({"1": GALLERY[1:50] + ["nope"]}), "pairid 1: 'nope' is not in the gallery"),
    ("recall", lambda o: o.update({"2": GALLERY[:50]}), "pairid 2: lists its own reference 'g0'"),
    ("recall", lambda o: o.update({"1": "g1"}), "pairid 1: expected a list of image names"),
    ("recall", lambda o: o.update({"1": [1] * 50}), "pairid 1: expected a list of image names"),
    ("recall_subset", lambda o: o.update({"1": ["g1", "g2", "g7"]}), "pairid 1: 'g7' is not in the query's img_set"),
    ("recall", lambda o: o.update({"3": GALLERY[1:51]}), "pairid 3 is not a query of this split"),
    ("recall", lambda o: o.pop("2"), r"1 queries missing \(e.g. \['2'\]\)"),
]


@pytest.mark.parametrize(("metric", "defect", "message"), DEFECTS)
def test_schema_rejects_each_defect(metric: str, defect, message: str) -> None:
    obj = valid(metric)
    validate_cirr_submission(obj, metric, GALLERY, references=REFS, members=MEMBERS, pairids=["1", "2"])
    defect(obj)
    with pytest.raises(SubmissionError, match=message):
        validate_cirr_submission(
            obj, metric, GALLERY, references=REFS if "3" not in obj else {**REFS}, members=MEMBERS, pairids=["1", "2"]
        )


def test_schema_rejects_non_objects_and_unknown_metric() -> None:
    with pytest.raises(SubmissionError, match="a submission is a JSON object, got list"):
        validate_cirr_submission([], "recall")
    with pytest.raises(SubmissionError, match="metric must be one of"):
        validate_cirr_submission(valid("recall"), "precision")
    with pytest.raises(SubmissionError, match="has no queries"):
        validate_cirr_submission({"version": "rc2", "metric": "recall"}, "recall")


def test_write_then_refuse_to_overwrite(tmp_path: Path) -> None:
    top50, top3 = [GALLERY[1:51], GALLERY[2:52]], [GALLERY[1:4], GALLERY[2:5]]
    recall, subset = write_cirr_submission([1, 2], top50, top3, tmp_path / "out", "run1", gallery_names=GALLERY)
    assert (recall.name, subset.name) == ("recall_submission_run1.json", "recall_subset_submission_run1.json")
    assert json.loads(recall.read_text()) == {"version": "rc2", "metric": "recall", "1": top50[0], "2": top50[1]}
    assert json.loads(subset.read_text()) == {"version": "rc2", "metric": "recall_subset", "1": top3[0], "2": top3[1]}
    subset.unlink()
    before = recall.read_text()
    with pytest.raises(SubmissionError, match="refusing to overwrite .*recall_submission_run1.json"):
        write_cirr_submission([1, 2], [GALLERY[3:53]] * 2, top3, tmp_path / "out", "run1")
    assert recall.read_text() == before and not subset.exists()  # nothing written, not even the free file
    with pytest.raises(SubmissionError, match="lists its own reference"):
        write_cirr_submission([1, 2], top50, top3, tmp_path / "o2", references=["g1", "g0"])
    assert not (tmp_path / "o2").exists()
    with pytest.raises(SubmissionError, match="a pairid is listed twice"):
        write_cirr_submission([1, 1], top50, top3, tmp_path / "o3")
    with pytest.raises(SubmissionError, match="differ in number"):
        write_cirr_submission([1], top50, top3, tmp_path / "o4")
    with pytest.raises(SubmissionError, match="plain file-name part"):
        submission_paths(tmp_path, "../x")


# ---------------------------------------------------------------------------------------------- end to end
class FakeModule(nn.Module):
    """A fixed random image encoder plus a byte-histogram text encoder, with the ctiir module contract."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.image = nn.Linear(3 * 8 * 8, 16)
        self.text = nn.Linear(256, 16, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.seen_training: list[bool] = []

    @staticmethod
    def histogram(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 256)
        for i, text in enumerate(texts):
            for b in text.encode():
                out[i, b] += 1
        return out

    def encode_gallery(self, batch: dict) -> torch.Tensor:
        self.seen_training.append(self.training)
        return F.normalize(self.image(batch["image"].flatten(1)), dim=-1)

    def encode_query(self, batch: dict) -> torch.Tensor:
        image = F.normalize(self.image(batch["image"].flatten(1)), dim=-1)
        return F.normalize(image + 0.5 * F.normalize(self.text(self.histogram(batch["text"])), dim=-1), dim=-1)


def cirr_test_split(root: Path, n_sets: int = 9) -> tuple[list, dict]:
    """A CIRR-layout test split (``test1``, no targets) with a distinct colour per image."""
    split_map, entries = {}, []
    gen = torch.Generator().manual_seed(5)
    for s in range(n_sets):
        members = [f"test1-{s}-{m}-img0" for m in range(6)]
        for m in members:
            split_map[m] = f"./test1/{m}.png"
            path = root / "img_raw" / "test1" / f"{m}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((torch.rand(8, 8, 3, generator=gen) * 255).byte().numpy()).save(path)
        for i in range(6):
            entries.append(
                {
                    "pairid": 100 * s + i,
                    "reference": members[i],
                    "caption": f"has {i} more dogs",
                    "img_set": {"id": s, "members": members},
                }
            )
    for folder, stem, data in (("captions", "cap", entries), ("image_splits", "split", split_map)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{stem}.rc2.test1.json").write_text(json.dumps(data))
    return entries, split_map


def test_predict_submission_end_to_end(tmp_path: Path) -> None:
    entries, split_map = cirr_test_split(tmp_path)
    dm = CIRRDataModule(str(tmp_path), image_root=str(tmp_path / "img_raw"), batch_size=7)
    dm.set_transforms(TF, TF)  # a module that is no ctiir stage records no preprocessing: the caller sets it
    module = FakeModule().train()
    recall_path, subset_path = predict_cirr_submission(module, dm, tmp_path / "sub")
    assert module.training and module.seen_training and not any(module.seen_training)

    names = list(split_map)
    with torch.no_grad():
        images = torch.stack([TF(Image.open(tmp_path / "img_raw" / split_map[n]).convert("RGB")) for n in names])
        gallery = module.encode_gallery({"image": images})
        refs = [names.index(e["reference"]) for e in entries]
        queries = module.encode_query({"image": images[refs], "text": [e["caption"] for e in entries]})
    scores = queries @ gallery.T
    recall, subset = json.loads(recall_path.read_text()), json.loads(subset_path.read_text())
    assert set(recall) == {"version", "metric"} | {str(e["pairid"]) for e in entries}
    for q, entry in enumerate(entries):
        ranked = sorted(
            (n for n in names if n != entry["reference"]), key=lambda n, q=q: -float(scores[q, names.index(n)])
        )
        assert recall[str(entry["pairid"])] == ranked[:50]
        group = [n for n in ranked if n in entry["img_set"]["members"]]
        assert subset[str(entry["pairid"])] == group[:3]
    with pytest.raises(SubmissionError, match="refusing to overwrite"):
        predict_cirr_submission(module, dm, tmp_path / "sub")


def test_predict_refuses_skipped_queries(tmp_path: Path) -> None:
    _, split_map = cirr_test_split(tmp_path)
    (tmp_path / "img_raw" / split_map["test1-0-0-img0"]).unlink()
    dm = CIRRDataModule(str(tmp_path), image_root=str(tmp_path / "img_raw"), on_missing="skip")
    dm.set_transforms(TF, TF)
    with pytest.raises(SubmissionError, match="the server needs every query"):
        predict_cirr_submission(FakeModule(), dm, tmp_path / "sub")
    assert not (tmp_path / "sub").exists()


def test_cirr_submission_command_from_a_stage_three_checkpoint(tmp_path: Path) -> None:
    """`ctiir cirr-submission`: a real (tiny, untrained) Stage III checkpoint in, two valid files out."""
    import lightning as L

    from ctiir.cli import main
    from ctiir.stages import ComposedRetrieval

    cirr_test_split(tmp_path)
    ckpt = tmp_path / "stage3.ckpt"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(ComposedRetrieval(backbone="tiny", fusion="gated"))
    trainer.save_checkpoint(ckpt)
    args = ["cirr-submission", "--ckpt", str(ckpt), "--root", str(tmp_path), "--image_root", str(tmp_path / "img_raw"),
            "--out", str(tmp_path / "sub"), "--device=auto", "--progress_bar=false"]
    assert main(args) == 0
    files = sorted((tmp_path / "sub").glob("*.json"))
    assert len(files) == 2
    for path in files:
        data = json.loads(path.read_text())
        metric = data["metric"]
        validate_cirr_submission(data, metric)
        assert len(data) - 2 == 9 * 6, "one ranking per query"
    before = [p.read_bytes() for p in files]
    assert main(args) == 1, "a second run must refuse, not overwrite"
    assert [p.read_bytes() for p in files] == before


def test_cirr_submission_command_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint that is not there, or a device that is not, is a usage error (2) in a few lines."""
    import torch

    from ctiir.cli import main

    base = ["cirr-submission", "--root", str(tmp_path), "--out", str(tmp_path / "sub")]
    assert main([*base, "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "none.ckpt not found" in err and "Traceback" not in err and len(err.splitlines()) <= 3
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    assert main([*base, "--ckpt", str(ckpt), "--device=tpu"]) == 2
    assert "--device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*base, "--ckpt", str(ckpt), "--device=cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert main([*base, "--ckpt", str(ckpt), "--image-root", str(tmp_path)]) == 2, "one spelling: --image_root"
    assert "--image-root" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()
