"""Results broken down by a query attribute: the general mechanism (``breakdown=[...]`` on a datamodule), checked
against recall computed directly on each group's queries."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from ctiir.callbacks import RetrievalEvaluation
from ctiir.datamodules import CustomDataModule
from ctiir.datamodules.tasks import collate_retrieval
from ctiir.metrics import recall_at_k, retrieval_ranks
from ctiir.stages import ComposedRetrieval

TEXTS = [
    "is red",  # short (<= 6 words)
    "is blue and darker",
    "is green with long sleeves and a collar on top",  # medium (7-12)
    "make it yellow and shorter with no pattern at all please",
    "make it purple and much longer with short sleeves and a plain v neck and a loose fit",  # long (13+)
]


def catalogue(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    (tmp_path / "img").mkdir()
    for i in range(8):
        Image.fromarray((torch.rand(16, 16, 3, generator=gen) * 255).byte().numpy()).save(tmp_path / "img" / f"{i}.png")
    rows = [
        {"reference": f"img/{i}.png", "target": f"img/{(i + 3) % 8}.png", "text": text, "split": "val"}
        for i, text in enumerate(TEXTS)
    ]
    rows.append({"reference": "img/0.png", "target": "img/1.png", "text": "is red", "split": "train"})
    (tmp_path / "triplets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_breakdown_by_caption_length_equals_recall_on_each_group(tmp_path: Path) -> None:
    root = catalogue(tmp_path)
    dm = CustomDataModule(str(root), triplets="triplets.jsonl", batch_size=2, breakdown=["caption_length"])
    torch.manual_seed(0)
    model = ComposedRetrieval(backbone="tiny", fusion="adaptive")
    callback = RetrievalEvaluation()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    logged = trainer.validate(model, datamodule=dm, verbose=False)[0]
    composed = callback.results["val"].composed()
    groups = composed.breakdown[None]["caption_length"]
    assert {v: g["queries"] for v, g in groups.items()} == {"short": 2.0, "medium": 2.0, "long": 1.0}

    (task,) = dm.composed_tasks("val")
    model.eval()
    with torch.no_grad():
        gallery = model.encode_gallery(collate_retrieval([task.gallery[i] for i in range(len(task.gallery))]))
        batch = collate_retrieval([task.queries[i] for i in range(len(task.queries))])
        fused = model.encode_query(batch)
    ranks = retrieval_ranks(fused.query, gallery, batch["target_id"], batch["reference_id"])
    lengths = ["short", "short", "medium", "medium", "long"]
    for value in ("short", "medium", "long"):
        mask = torch.tensor([v == value for v in lengths])
        want = recall_at_k(ranks[mask], task.ks)
        assert {f"R@{k}": v for k, v in want.items()} == pytest.approx({f"R@{k}": groups[value][f"R@{k}"] for k in task.ks})
        assert groups[value]["w_img"] == pytest.approx(float(fused.weights[mask, 0].mean()), abs=1e-6)
    assert logged["val/custom/caption_length=long/R@1"] == pytest.approx(groups["long"]["R@1"])


def test_an_unknown_breakdown_attribute_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot break results down by \['colour'\]; known attributes: caption_length"):
        CustomDataModule(str(tmp_path), triplets="t.jsonl", breakdown=["colour"])


def test_example_pictures_show_the_best_and_worst_ranked_queries(tmp_path: Path) -> None:
    from ctiir.callbacks.examples import chosen_rows
    from ctiir.metrics.recall import QueryRanks

    ranks = QueryRanks(torch.tensor([4, 0, 3, 1, 2]), torch.tensor([7, 0, 2, 0, 9]))
    rows = chosen_rows(ranks, 2)
    assert ranks.query_ids[rows["best"]].tolist() == [0, 1] and ranks.query_ids[rows["worst"]].tolist() == [2, 4]

    (tmp_path / "data").mkdir()
    root = catalogue(tmp_path / "data")
    dm = CustomDataModule(str(root), triplets="triplets.jsonl", batch_size=2)
    callback = RetrievalEvaluation(save_examples=2, examples_k=3)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback], default_root_dir=str(tmp_path / "run"))
    trainer.validate(ComposedRetrieval(backbone="tiny"), datamodule=dm, verbose=False)
    for name in ("best", "worst"):
        with Image.open(tmp_path / "run" / "examples" / "val" / f"custom-{name}.png") as image:
            assert image.width > 3 * 64 and image.height > 2 * 32  # a reference and 3 results, 2 rows
    assert sorted(p.name for p in (tmp_path / "run" / "examples" / "val").iterdir()) == ["custom-best.png", "custom-worst.png"]


def test_synthetic_scenario_breakdown_and_kept_query_outcomes(tmp_path: Path) -> None:
    """The embedded benchmark's scenarios through the same mechanism; the kept per-query outcomes are the
    ranks the metrics were computed from, in the task's query order."""
    from ctiir.datamodules import SyntheticDataModule
    from ctiir.datamodules.synthetic import query_scenarios, read_metadata

    dm = SyntheticDataModule(str(tmp_path / "synth"), size="tiny", scenarios="mixed", breakdown=["scenario"], batch_size=8)
    dm.prepare_data()
    torch.manual_seed(0)
    model = ComposedRetrieval(backbone="tiny", fusion="adaptive")
    callback = RetrievalEvaluation(kinds=["composed"], keep_queries=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    logged = trainer.test(model, datamodule=dm, verbose=False)[0]
    meta = read_metadata(tmp_path / "synth")
    kept = callback.queries["test"]
    assert sorted(kept) == ["synthetic/dress", "synthetic/shirt", "synthetic/toptee"]
    for key, outcomes in kept.items():
        category = key.split("/")[1]
        assert [o.groups["scenario"] for o in outcomes] == query_scenarios(meta, category, "val")
        assert [o.name for o in outcomes] == [f"cap.{category}.val.json#{i}" for i in range(len(outcomes))]
        groups = callback.results["test"].protocols["synthetic"].breakdown[category]["scenario"]
        assert set(groups) == {"edit", "text-led", "image-led"}
        for scenario, metrics in groups.items():
            mine = [o for o in outcomes if o.groups["scenario"] == scenario]
            assert metrics["queries"] == len(mine)
            ranks = torch.tensor([o.rank for o in mine])
            assert metrics["R@10"] == pytest.approx(recall_at_k(ranks, (10,))[10])
            assert metrics["w_img"] == pytest.approx(sum(o.w_img for o in mine) / len(mine), abs=1e-6)
    all_ranks = torch.tensor([o.rank for o in kept["synthetic/dress"]])
    assert logged["test/synthetic/dress/R@50"] == pytest.approx(recall_at_k(all_ranks, (50,))[50])
    assert "test/synthetic/dress/scenario=text-led/R@10" in logged
