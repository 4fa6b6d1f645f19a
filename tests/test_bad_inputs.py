"""The bad-input catalogue beyond images (those are in test_bad_images.py) and checkpoints (test_checkpoint_loading.py):
captions, annotation encodings, embeddings, K, empty sets, output folders that already hold files, and a
mistyped fusion. Each case expects a clear error naming the file, key or value, or a documented behaviour
(docs/robustness.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from ctiir.backbones.base import TruncationWarning
from ctiir.callbacks import RetrievalEvaluation
from ctiir.datamodules.annotations import read_json
from ctiir.datamodules.errors import AnnotationError
from ctiir.datamodules.tables import read_image_text_pairs
from ctiir.datamodules.tasks import ListDataset, RetrievalTask
from ctiir.metrics.functional import recall_at_k, retrieval_ranks
from ctiir.stages import ComposedRetrieval


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctiir.datamodules.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", seed=0, size="tiny")


# ---------------------------------------------------------------------------------------------- captions
def test_an_empty_caption_is_an_error_naming_the_file_and_entry(synth: Path, tmp_path: Path) -> None:
    from ctiir.datamodules.fashioniq import read_fashioniq_captions

    root = tmp_path / "data"
    shutil.copytree(synth / "captions", root / "captions")
    path = root / "captions" / "cap.dress.val.json"
    entries = json.loads(path.read_text())
    entries[2]["captions"] = ["", "  "]
    path.write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"cap\.dress\.val\.json entry 2: every caption is empty"):
        read_fashioniq_captions(root, "dress", "val")
    table = tmp_path / "pairs.jsonl"
    table.write_text('{"image": "a.png", "text": "a red dress", "split": "train"}\n{"image": "b.png", "text": " ", "split": "train"}\n')
    with pytest.raises(AnnotationError, match=r"pairs\.jsonl line 2.*empty 'text'"):
        read_image_text_pairs(table, tmp_path)


def test_a_caption_of_ten_thousand_characters_is_truncated_to_the_context_with_a_warning() -> None:
    model = ComposedRetrieval(backbone="tiny")
    long = "a long sleeved red dress with white dots " * 250
    assert len(long) >= 10_000
    with pytest.warns(TruncationWarning, match=r"1 of 2 texts are longer than this backbone's context of 32 tokens"):
        embeddings = model.encode_texts(["is red", long])
    assert embeddings.shape == (2, model.backbone.embed_dim) and torch.isfinite(embeddings).all()
    truncated = model.encode_texts([long[:200]])  # the context holds less than 200 characters of it
    assert torch.allclose(embeddings[1], truncated[0], atol=1e-6)


def test_text_that_fits_gives_no_warning(recwarn: pytest.WarningsRecorder) -> None:
    model = ComposedRetrieval(backbone="tiny")
    model.encode_texts(["is red and shorter", "has long sleeves"])
    assert not [w for w in recwarn if issubclass(w.category, TruncationWarning)]


# ---------------------------------------------------------------------------------------------- encodings
def test_non_utf8_annotation_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    latin = "robe d'été".encode("latin-1")
    (tmp_path / "cap.dress.val.json").write_bytes(b'[{"candidate": "a", "target": "b", "captions": ["' + latin + b'", "x"]}]')
    with pytest.raises(AnnotationError, match=r"cap\.dress\.val\.json: not UTF-8 text"):
        read_json(tmp_path / "cap.dress.val.json")
    for name in ("pairs.jsonl", "pairs.csv"):
        body = b"image,text,split\na.png," + latin + b",train\n" if name.endswith(".csv") else b'{"image": "a.png", "text": "' + latin + b'", "split": "train"}\n'
        (tmp_path / name).write_bytes(body)
        with pytest.raises(AnnotationError, match=rf"{name}: not UTF-8 text"):
            read_image_text_pairs(tmp_path / name, tmp_path)


# ---------------------------------------------------------------------------------------------- embeddings
class ConstantModule(L.LightningModule):
    """Encodes gallery item ``i`` as basis vector ``i`` and query ``q`` as its target's; ``nan_query`` breaks one."""

    def __init__(self, dim: int, nan_query: int | None = None) -> None:
        super().__init__()
        self.dim, self.nan_query = dim, nan_query

    def encode_gallery(self, batch):
        return torch.nn.functional.one_hot(batch["gallery_id"], self.dim).float()

    def encode_query(self, batch):
        out = torch.nn.functional.one_hot(batch["target_id"], self.dim).float()
        if self.nan_query is not None:
            out[batch["query_id"] == self.nan_query] = float("nan")
        return out


def task(gallery: int, queries: int, ks: tuple[int, ...] = (1, 5)) -> RetrievalTask:
    return RetrievalTask(
        "toy", "dress",
        ListDataset(list(range(gallery)), lambda r, i: {"gallery_id": i}),
        ListDataset(list(range(queries)), lambda r, i: {"query_id": i, "target_id": i % max(gallery, 1), "reference_id": -1}),
        [f"g{i}" for i in range(gallery)], [f"q{i}" for i in range(queries)], ks=ks, split="val",
    )


def evaluate(module: L.LightningModule, t: RetrievalTask) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics, _ = RetrievalEvaluation()._evaluate_task(trainer, module, t, batch_size=4, num_workers=0, prefix="val")
    return metrics


def test_nan_embeddings_are_errors_naming_the_task_and_the_items() -> None:
    with pytest.raises(ValueError, match=r"task toy/dress: encode_query returned NaN or infinite embeddings for ids \[5\]"):
        evaluate(ConstantModule(8, nan_query=5), task(8, 8))
    queries = torch.eye(4)
    queries[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"queries row 2 holds NaN or infinite values"):
        retrieval_ranks(queries, torch.eye(4), torch.arange(4))


def test_nan_embeddings_never_reach_a_submission() -> None:
    from ctiir.submission import cirr_rankings

    gallery = torch.eye(60)
    gallery[7] = float("nan")
    names = [f"dev-{i}" for i in range(60)]
    with pytest.raises(ValueError, match=r"gallery embedding 7 \(dev-7\) holds NaN or infinite values \(1 such rows\)"):
        cirr_rankings(torch.eye(60)[:2], gallery, torch.tensor([0, 1]), torch.tensor([[2, 3, 4, 5]] * 2), names)
    queries = torch.eye(60)[:2]
    queries[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"query embedding 1 holds NaN or infinite values"):
        cirr_rankings(queries, torch.eye(60), torch.tensor([0, 1]), torch.tensor([[2, 3, 4, 5]] * 2), names)


# ---------------------------------------------------------------------------------------------- K and empty sets
def test_k_larger_than_the_gallery_gives_the_documented_full_recall() -> None:
    """R@K with K >= the gallery size is 100% by definition: every target ranks within the whole gallery."""
    metrics = evaluate(ConstantModule(6), task(6, 6, ks=(1, 50)))
    assert metrics["R@1"] == 100.0 and metrics["R@50"] == 100.0
    ranks = torch.tensor([5, 3, 0])  # the worst possible ranks in a gallery of 6
    assert recall_at_k(ranks, [6, 50]) == {6: 100.0, 50: 100.0}
    from ctiir.submission import cirr_rankings

    with pytest.raises(ValueError, match=r"the gallery has 6 images: too few for top-50 lists"):
        cirr_rankings(torch.eye(6), torch.eye(6), torch.tensor([0] * 6), torch.tensor([[1, 2, 3, 4]] * 6), list("abcdef"))


@pytest.mark.parametrize(("gallery", "queries", "what"), [(0, 4, "gallery"), (4, 0, "query set")])
def test_an_empty_gallery_or_query_set_is_an_error_naming_the_task(gallery: int, queries: int, what: str) -> None:
    with pytest.raises(ValueError, match=rf"task toy/dress \(val split\): the {what} is empty; nothing to rank"):
        evaluate(ConstantModule(4), task(gallery, queries))


# ---------------------------------------------------------------------------------------------- output folders
def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_synth_into_a_folder_of_other_files_refuses_and_touches_nothing(tmp_path: Path) -> None:
    from ctiir.datamodules.synthetic import synth_main

    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    before = tree(out)
    for extra in ([], ["--overwrite"]):
        assert synth_main(["--out", str(out), "--size", "tiny", "--quiet", *extra]) == 2
        assert tree(out) == before


def test_synth_overwrite_never_deletes_outside_out_even_if_its_metadata_says_so(synth: Path, tmp_path: Path) -> None:
    """The finding: a synthetic.json listing ``../victim.txt`` made ``--overwrite`` delete that file."""
    from ctiir.datamodules.synthetic import META_FILE, SyntheticOutputError, generate

    out = tmp_path / "out"
    shutil.copytree(synth, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    (out / "stage1" / "own.txt").write_text("listed, but not a file the generator writes")
    meta = json.loads((out / META_FILE).read_text())
    meta["scenes"]["../victim.txt"] = next(iter(meta["scenes"].values()))
    meta["scenes"]["stage1/own.txt"] = next(iter(meta["scenes"].values()))
    (out / META_FILE).write_text(json.dumps(meta))
    before = tree(out)
    with pytest.raises(SyntheticOutputError, match=r"lists files that this generator did not write.*'\.\./victim\.txt'"):
        generate(out, seed=1, size="tiny", overwrite=True)
    assert victim.read_text() == "not yours" and tree(out) == before


def test_a_submission_folder_that_holds_files_keeps_them_all(tmp_path: Path) -> None:
    from ctiir.submission import SubmissionError, submission_paths, write_cirr_submission

    names = [f"img{i}" for i in range(60)]
    args = ([1], [names[:50]], [names[:3]], tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    recall, _ = submission_paths(tmp_path, "run")
    recall.write_text("an earlier submission")
    before = tree(tmp_path)
    with pytest.raises(SubmissionError, match=r"refusing to overwrite .*recall_submission_run\.json"):
        write_cirr_submission(*args, "run")
    assert tree(tmp_path) == before
    write_cirr_submission(*args, "run2")
    assert {k: v for k, v in tree(tmp_path).items() if k in before} == before


def test_check_data_outputs_never_overwrite(synth: Path, tmp_path: Path) -> None:
    from ctiir.checkdata import check_data_main

    report = tmp_path / "report.json"
    report.write_text("an earlier report")
    filtered = tmp_path / "filtered" / "captions"
    filtered.mkdir(parents=True)
    (filtered / "cap.dress.val.json").write_text("an earlier copy")
    base = ["--dataset", "fashioniq", "--root", str(synth), "--no-progress", "--categories", "dress", "--splits", "val"]
    assert check_data_main([*base, "--json", str(report)]) == 2
    assert check_data_main([*base, "--write-filtered", str(tmp_path / "filtered")]) == 2
    assert report.read_text() == "an earlier report" and (filtered / "cap.dress.val.json").read_text() == "an earlier copy"


def test_a_progressive_run_dir_keeps_foreign_files_and_refuses_another_runs_config(tmp_path: Path) -> None:
    from ctiir.pipeline import PipelineConfig, PipelineError, StageConfig, run_progressive

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    stages = {name: StageConfig(enabled=False) for name in ("I", "II", "III")}
    first = PipelineConfig(run_dir=str(run_dir), stages=stages, seed=1, progress_bar=False)
    (run_dir / "run-config.json").write_text(json.dumps({"seed": 0}))  # an interrupted run of another config
    with pytest.raises(PipelineError, match=r"holds an unfinished run with another configuration \(differs in: .*seed"):
        run_progressive(first)
    (run_dir / "run-config.json").unlink()
    run_progressive(first)
    assert (run_dir / "notes.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        run_progressive(first)


def test_a_truncated_results_json_is_not_a_finished_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ctiir.pipeline import PipelineConfig, StageConfig, run_progressive

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"config": {"seed": 0}, "stages": {"I": {"fus')
    stages = {name: StageConfig(enabled=False) for name in ("I", "II", "III")}
    run_progressive(PipelineConfig(run_dir=str(run_dir), stages=stages, progress_bar=False))
    assert "results.json is incomplete or unreadable" in caplog.text
    assert json.loads((run_dir / "results.json").read_text())["stages"]["I"] == {"skipped": True}


# ---------------------------------------------------------------------------------------------- a mistyped fusion
def test_progressive_with_an_unknown_fusion_stops_before_training_in_a_few_lines(synth: Path, tmp_path: Path) -> None:
    """The finding: an 83-line double traceback, after Stages I and II had trained."""
    config = tmp_path / "p.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\nprogress_bar: false\n"
        f"data: {{class_path: ctiir.datamodules.SyntheticDataModule, init_args: {{root: {synth}, size: tiny}}}}\n"
        "stages: {III: {model: {fusion: nope}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "ctiir.cli", "progressive", "--config", str(config)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["ctiir progressive: error: stage III: model.fusion: unknown fusion 'nope'; known fusions: adaptive, fixed, gated"]
    assert not (tmp_path / "run" / "stage-I").exists(), "nothing trained"


def test_progressive_with_an_unknown_stage_argument_names_it() -> None:
    from ctiir.pipeline import PipelineConfig, PipelineError, StageConfig, run_progressive

    cfg = PipelineConfig(run_dir="/nonexistent-never-written", stages={"II": StageConfig(model={"fusoin": "gated"})})
    with pytest.raises(PipelineError, match=r"stage II: model: unknown argument\(s\) \['fusoin'\].*known: .*fusion"):
        run_progressive(cfg)


@pytest.mark.slow
def test_fit_with_an_unknown_fusion_prints_a_few_lines_naming_the_known_ones(synth: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ctiir.cli", "fit", "--model=ctiir.stages.ComposedRetrieval", "--model.init_args.fusion=nope",
         "--data=ctiir.datamodules.SyntheticDataModule", f"--data.init_args.root={synth}", "--data.init_args.size=tiny",
         "--trainer.max_steps=1", "--trainer.logger=false"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "fusion" in line]
    assert any("unknown fusion 'nope'; known fusions: adaptive, fixed, gated" in line for line in errors), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 8, done.stderr
