"""The gallery index: round trip, atomic writes (crashes at three points), --update, load-time checks,
unreadable images, and an index over a datamodule's gallery."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image, ImageDraw

from ctiir.retrieval import IndexCorruptError, IndexMismatchError, RetrievalError, UnreadableImagesError, load_index
from ctiir.retrieval.indexer import build_index
from ctiir.retrieval.model import eval_transform, load_stage
from ctiir.retrieval.retriever import Retriever
from ctiir.retrieval.storage import check_compatible
from ctiir.stages import ComposedRetrieval

REPO = Path(__file__).resolve().parents[1]
COLORS = [(220, 30, 30), (30, 60, 220), (30, 160, 60), (240, 200, 30), (20, 20, 20), (160, 40, 170), (250, 140, 180), (120, 120, 120)]


def save_checkpoint(path: Path, seed: int = 0, **kwargs) -> Path:
    torch.manual_seed(seed)
    model = ComposedRetrieval(backbone=kwargs.pop("backbone", "tiny"), fusion="adaptive", **kwargs)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def draw(path: Path, i: int, size: tuple[int, int] = (72, 64)) -> None:
    image = Image.new("RGB", size, COLORS[i % len(COLORS)])
    d = ImageDraw.Draw(image)
    d.ellipse([8 + i, 8, 40 + 2 * i, 50], fill=COLORS[(i + 3) % len(COLORS)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_gallery(root: Path) -> Path:
    """Eight images in nested folders, as png, jpg and webp, plus a file that is not an image."""
    names = ["a/0.png", "a/1.png", "a/2.jpg", "b/3.png", "b/c/4.webp", "b/c/5.png", "6.png", "7.jpeg"]
    for i, name in enumerate(names):
        draw(root / name, i)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt")


@pytest.fixture(scope="module")
def module(ckpt: Path):
    return load_stage(ckpt)


@pytest.fixture()
def gallery(tmp_path: Path) -> Path:
    return make_gallery(tmp_path / "gallery")


def build(ckpt: Path, module, images: Path, out: Path, **kwargs):
    return build_index(ckpt, out, images=images, module=module, progress=False, trainer_kwargs={"accelerator": "cpu"}, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_matches_the_model(ckpt: Path, module, gallery: Path, tmp_path: Path, dtype: str) -> None:
    report = build(ckpt, module, gallery, tmp_path / "index", dtype=dtype)
    assert report.count == 8 and report.encoded == 8 and not report.skipped
    index = load_index(tmp_path / "index")
    assert index.ids == sorted(["a/0.png", "a/1.png", "a/2.jpg", "b/3.png", "b/c/4.webp", "b/c/5.png", "6.png", "7.jpeg"])
    assert index.embeddings.dtype == getattr(torch, dtype)
    tf = eval_transform(module)
    with torch.no_grad():
        direct = module.encode_gallery({"image": torch.stack([tf(Image.open(gallery / i).convert("RGB")) for i in index.ids])})
    tolerance = 2e-3 if dtype == "float16" else 1e-5
    assert torch.allclose(index.embeddings.float(), direct, atol=tolerance)
    m = index.manifest
    assert m["count"] == 8 and m["dim"] == module.backbone.embed_dim and m["dtype"] == dtype
    assert m["backbone"] == module.hparams["backbone"] and len(m["checkpoint"]["sha256"]) == 64
    assert len(m["embeddings_sha256"]) == 64 and m["ctiir_version"] and m["created"] and "preprocessing" in m
    assert index.image_path(index.position("b/c/4.webp")) == (gallery / "b/c/4.webp").resolve()


# ------------------------------------------------------------------------------------------ atomicity
def test_crash_while_writing_embeddings_leaves_the_previous_index(ckpt: Path, module, gallery: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "index"
    build(ckpt, module, gallery, out)
    before = snapshot(out)
    draw(gallery / "new.png", 5)

    def half_written(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 100)  # a partial file, then the process "dies"
        raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr("ctiir.retrieval.storage.save_file", half_written)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(ckpt, module, gallery, out)
    assert snapshot(out) == before
    assert len(load_index(out)) == 8


@pytest.mark.slow
def test_hard_kill_before_the_commit_point_leaves_the_previous_index(ckpt: Path, module, gallery: Path, tmp_path: Path) -> None:
    """A real process death (``os._exit``, no cleanup runs) after the new files are staged, before the journal."""
    out = tmp_path / "index"
    build(ckpt, module, gallery, out)
    before = snapshot(out)
    script = textwrap.dedent(
        f"""
        import os, torch
        import ctiir.retrieval.atomic as atomic
        from ctiir.retrieval.storage import load_index, save_index
        old = load_index({str(out)!r})
        atomic.write_atomic = lambda *a, **k: os._exit(3)   # die right at the commit point (the journal write)
        save_index({str(out)!r}, old.manifest, old.ids[:3], torch.randn(3, old.dim), old.sources.select([0, 1, 2]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert any(name.endswith(tuple(f"-{c}" for c in "0123456789abcdef")) or ".tmp-" in name for name in os.listdir(out))
    index = load_index(out)
    assert len(index) == 8
    assert {k: v for k, v in snapshot(out).items() if ".tmp-" not in k} == before
    build(ckpt, module, gallery, out)  # the next write cleans the staged leftovers up
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_crash_after_the_commit_point_is_finished_by_the_next_reader(ckpt: Path, module, gallery: Path, tmp_path: Path, monkeypatch) -> None:
    import ctiir.retrieval.atomic as atomic

    out = tmp_path / "index"
    build(ckpt, module, gallery, out)
    (gallery / "6.png").unlink()
    real = atomic._roll_forward
    calls = {"n": 0}

    def dies_once(folder, journal):
        calls["n"] += 1
        if calls["n"] == 1:
            os.replace(folder / journal["files"]["embeddings.safetensors"], folder / "embeddings.safetensors")
            raise RuntimeError("simulated crash between two renames")
        return real(folder, journal)

    monkeypatch.setattr(atomic, "_roll_forward", dies_once)
    with pytest.raises(RuntimeError, match="between two renames"):
        build(ckpt, module, gallery, out)
    assert (out / atomic.JOURNAL).exists()  # new embeddings beside old ids: only the journal makes this safe
    index = load_index(out)
    assert len(index) == 7 and "6.png" not in index.ids
    assert not (out / atomic.JOURNAL).exists()


# ------------------------------------------------------------------------------------------ --update
def test_update_encodes_only_new_and_changed_images_and_drops_deleted(ckpt: Path, module, gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    build(ckpt, module, gallery, out)
    old = load_index(out)
    draw(gallery / "a/new.png", 6)                       # new
    draw(gallery / "b/3.png", 1, size=(90, 80))          # changed (other size and mtime)
    (gallery / "a/1.png").unlink()                       # deleted
    encoded_rows = []
    original = module.encode_gallery

    def counting(batch):
        encoded_rows.append(batch["image"].shape[0])
        return original(batch)

    module.encode_gallery = counting
    try:
        report = build(ckpt, module, gallery, out, update=True)
    finally:
        del module.encode_gallery
    assert sum(encoded_rows) == 2 and report.encoded == 2
    assert (report.plan.added, report.plan.changed, report.plan.dropped) == (["a/new.png"], ["b/3.png"], ["a/1.png"])
    new = load_index(out)
    assert "a/1.png" not in new.ids and "a/new.png" in new.ids and len(new) == 8
    for gid in ("a/0.png", "b/c/4.webp", "7.jpeg"):  # unchanged: the very same stored embedding
        assert torch.equal(new.embeddings[new.position(gid)], old.embeddings[old.position(gid)])
    tf = eval_transform(module)
    with torch.no_grad():
        fresh = module.encode_gallery({"image": tf(Image.open(gallery / "b/3.png").convert("RGB"))[None]})[0]
    assert torch.allclose(new.embeddings[new.position("b/3.png")].float(), fresh, atol=2e-3)
    assert not torch.allclose(new.embeddings[new.position("b/3.png")], old.embeddings[old.position("b/3.png")], atol=1e-2)


def test_update_refuses_another_checkpoint_and_another_dtype(ckpt: Path, module, gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    build(ckpt, module, gallery, out)
    other = save_checkpoint(tmp_path / "other.ckpt", seed=1)
    with pytest.raises(IndexMismatchError, match="checkpoint"):
        build_index(other, out, images=gallery, update=True, progress=False)
    with pytest.raises(RetrievalError, match="keeps its dtype"):
        build(ckpt, module, gallery, out, update=True, dtype="float32")
    with pytest.raises(RetrievalError, match="no index to update"):
        build(ckpt, module, gallery, tmp_path / "nothing", update=True)


# ------------------------------------------------------------------------------------------ load checks
def test_another_checkpoint_or_backbone_is_refused(ckpt: Path, module, gallery: Path, tmp_path: Path) -> None:
    """Issue 9's catalogue, "an index from another model": an error that names both checkpoints."""
    out = tmp_path / "index"
    build(ckpt, module, gallery, out)
    other = save_checkpoint(tmp_path / "other.ckpt", seed=1)  # the same architecture: only the weights differ
    with pytest.raises(IndexMismatchError) as info:
        Retriever.from_checkpoint(other, out)
    message = str(info.value)
    assert f"built from checkpoint {ckpt.resolve()}" in message and f"not from {other}" in message, message
    cfg = copy.deepcopy(module.hparams["backbone"]["model_cfg"])
    cfg["embed_dim"] = 64
    small = save_checkpoint(tmp_path / "small.ckpt", backbone={"name": "tiny", "model_cfg": cfg})
    with pytest.raises(IndexMismatchError, match="backbone"):
        Retriever.from_checkpoint(small, out)
    index = load_index(out)
    with pytest.raises(IndexMismatchError, match="128-d embeddings, but the model makes 64-d"):
        check_compatible(index.manifest, folder=out, backbone=index.manifest["backbone"], dim=64, ckpt_sha256=None)
    assert Retriever.from_checkpoint(ckpt, out).search(text="red", k=3).ids  # the right pair works


def test_changed_embeddings_and_inconsistent_counts_are_errors(ckpt: Path, module, gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    build(ckpt, module, gallery, out)
    pristine = snapshot(out)
    data = bytearray(pristine["embeddings.safetensors"])
    data[-3] ^= 0xFF
    (out / "embeddings.safetensors").write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="embeddings_sha256"):
        load_index(out)
    (out / "embeddings.safetensors").write_bytes(pristine["embeddings.safetensors"])

    ids = json.loads(pristine["ids.json"])
    (out / "ids.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(IndexCorruptError, match="ids_sha256"):
        load_index(out)
    # the same truncation with the hash made consistent: the count check catches it
    import hashlib

    manifest = json.loads(pristine["manifest.json"])
    manifest["ids_sha256"] = hashlib.sha256((out / "ids.json").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="holds 7 ids but .* count=8"):
        load_index(out)
    sources = json.loads(pristine["sources.json"])
    sources = {"root": sources["root"], **{key: sources[key][:-1] for key in ("paths", "size", "mtime_ns")}}
    (out / "sources.json").write_text(json.dumps(sources))
    manifest["sources_sha256"] = hashlib.sha256((out / "sources.json").read_bytes()).hexdigest()
    manifest["count"] = 7
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match=r"holds \(8, 128\) embeddings but the manifest says \(7, 128\)"):
        load_index(out)
    shutil.rmtree(out)
    with pytest.raises(RetrievalError, match="not found"):
        load_index(out)


# ------------------------------------------------------------------------------------------ NaN embeddings
def rewrite_embeddings(folder: Path, embeddings: torch.Tensor) -> None:
    """Replace an index's embeddings and make the manifest's hash agree: an index written with NaN rows by an
    older ctiir or another tool, which the hash check alone would accept."""
    import hashlib

    from safetensors.torch import save_file

    save_file({"embeddings": embeddings.contiguous()}, str(folder / "embeddings.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["embeddings_sha256"] = hashlib.sha256((folder / "embeddings.safetensors").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_nan_or_infinite_embeddings_in_an_index_are_refused(ckpt: Path, module, gallery: Path, tmp_path: Path, dtype: str) -> None:
    """Issue 9's catalogue, "NaN embeddings" in an index: ``topk`` ranks NaN first, so a NaN row would top every
    query. Loading refuses it, naming the file and the ids; writing one is refused before anything is replaced."""
    out = tmp_path / "index"
    build(ckpt, module, gallery, out, dtype=dtype)
    index = load_index(out)
    bad = index.embeddings.clone()
    bad[index.position("b/3.png"), 5] = float("nan")
    bad[index.position("7.jpeg"), 0] = float("inf")
    rewrite_embeddings(out, bad)
    for verify in (True, False):
        with pytest.raises(IndexCorruptError, match=r"embeddings.safetensors: NaN or infinite embeddings in 2 rows \(7.jpeg, b/3.png\)"):
            load_index(out, verify=verify)
    with pytest.raises(IndexCorruptError, match="NaN or infinite"):
        Retriever.from_checkpoint(ckpt, out)

    good = tmp_path / "good"
    build(ckpt, module, gallery, good, dtype=dtype)
    before = snapshot(good)
    from ctiir.retrieval.storage import save_index

    with pytest.raises(RetrievalError, match=r"not written: NaN or infinite embeddings in 2 rows \(7.jpeg, b/3.png\)"):
        save_index(good, index.manifest, index.ids, bad.float(), index.sources)
    assert snapshot(good) == before


def test_a_checkpoint_with_nan_weights_builds_no_index(ckpt: Path, gallery: Path, tmp_path: Path) -> None:
    """A diverged training's checkpoint (NaN weights) gives NaN embeddings: an error naming the checkpoint and the
    images, and no index (a previous one stays as it was)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["state_dict"]["backbone.model.visual.ln_post.weight"].fill_(float("nan"))
    diverged = tmp_path / "diverged.ckpt"
    torch.save(state, diverged)
    expected = f"checkpoint {diverged} gave NaN or infinite embeddings for 8 images ({gallery.resolve()}/"
    with pytest.raises(RetrievalError, match=re.escape(expected)):
        build_index(diverged, tmp_path / "index", images=gallery, progress=False, trainer_kwargs={"accelerator": "cpu"})
    assert not (tmp_path / "index" / "manifest.json").exists()


# ------------------------------------------------------------------------------------------ unreadable images
def test_unreadable_images_are_skipped_with_their_paths_or_refused_with_strict(ckpt: Path, module, gallery: Path, tmp_path: Path) -> None:
    (gallery / "a/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    report = build(ckpt, module, gallery, tmp_path / "index")
    assert report.count == 8 and list(report.skipped) == [str((gallery / "a/broken.png").resolve())]
    index = load_index(tmp_path / "index")
    assert "a/broken.png" not in index.ids and index.manifest["skipped"] == list(report.skipped)
    with pytest.raises(UnreadableImagesError, match="(?s)1 unreadable images .*broken.png"):
        build(ckpt, module, gallery, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_index_command_reports_skips_and_exit_codes(ckpt: Path, gallery: Path, tmp_path: Path, capsys, caplog) -> None:
    from ctiir.cli import main

    (gallery / "broken.jpg").write_bytes(b"nope")
    args = ["index", "--ckpt", str(ckpt), "--images", str(gallery), "--out", str(tmp_path / "idx"), "--accelerator=cpu", "--progress_bar=false"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "8 images" in captured.out and "1 unreadable images skipped" in captured.out
    # each skipped image is named by the library's warning (stderr in a terminal; pytest's log capture here)
    assert [r for r in caplog.records if r.levelname == "WARNING" and "broken.jpg" in r.getMessage()]
    assert main([*args, "--strict=true"]) == 1
    assert "broken.jpg" in capsys.readouterr().err
    usage = [
        ["--ckpt", str(ckpt), "--out", str(tmp_path / "x")],  # neither --images nor --dataset
        ["--ckpt", str(ckpt), "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
        ["--ckpt", str(tmp_path / "none.ckpt"), "--images", str(gallery), "--out", str(tmp_path / "x")],
        ["--ckpt", str(ckpt), "--images", str(gallery), "--out", str(tmp_path / "x"), "--dtype", "int8"],
        ["--ckpt", str(ckpt), "--images", str(gallery), "--out", str(tmp_path / "x"), "--strict"],  # a boolean takes a value
        ["--ckpt", str(ckpt), "--images", str(gallery), "--out", str(tmp_path / "x"), "--device=cpu"],  # not --devices
    ]
    named_in_err = ["exactly one of", "missing not found", "none.ckpt not found", "int8", "--strict", "unrecognized arguments: --device=cpu"]
    for extra, named in zip(usage, named_in_err, strict=True):
        assert main(["index", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("ctiir index: error:") and named in err, err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ a dataset's gallery
def test_index_a_datamodule_gallery_from_a_yaml_config(ckpt: Path, tmp_path: Path, capsys) -> None:
    from ctiir.cli import main
    from ctiir.datamodules.synthetic import generate

    root = generate(tmp_path / "synth", seed=0, size="tiny")
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: ctiir.datamodules.SyntheticDataModule\n"
        f"  init_args: {{root: {root}, size: tiny, batch_size: 8}}\n"
    )
    out = tmp_path / "idx"
    code = main(
        ["index", "--ckpt", str(ckpt), "--dataset", str(config), "--task", "synthetic/dress", "--out", str(out), "--accelerator=cpu", "--progress_bar=false"]
    )
    assert code == 0, capsys.readouterr().err
    index = load_index(out)
    assert index.manifest["source"]["kind"] == "dataset" and len(index) > 8
    assert all(not i.endswith(".png") for i in index.ids)  # the dataset's names, not file paths
    assert all(index.image_path(r).is_file() for r in range(len(index)))
    assert main(["index", "--ckpt", str(ckpt), "--dataset", str(config), "--task", "nope", "--out", str(out), "--accelerator=cpu"]) == 1
    assert "not one of the dataset's test tasks" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_ddp_encoding_writes_the_same_index(ckpt: Path, module, gallery: Path, tmp_path: Path) -> None:
    """Each rank encodes its DistributedSampler share into shards; rank 0 merges them (padding repeats dropped)."""
    for i in range(8, 13):  # 13 images: an odd count, so the sampler pads one rank with a repeat
        draw(gallery / f"extra/{i}.png", i)
    build(ckpt, module, gallery, tmp_path / "single")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "ctiir.cli", "index", "--ckpt", str(ckpt), "--images", str(gallery), "--out", str(tmp_path / "ddp"),
         "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--batch_size", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = load_index(tmp_path / "single"), load_index(tmp_path / "ddp")
    assert ddp.ids == single.ids and len(ddp) == 13
    assert torch.allclose(ddp.embeddings.float(), single.embeddings.float(), atol=1e-3)
    assert not (tmp_path / "ddp" / ".encode-shards").exists()
