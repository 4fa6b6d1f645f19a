"""Backbone entries: the contract (parametrised over every registered entry), every weight source, offline
errors and the tokenizers."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPTokenizer

from ctiir.backbones import build_backbone, list_backbones
from ctiir.backbones.hf_clip import check_tokenizer, clip_bpe_tokenizer
from ctiir.backbones.openclip import TINY_CONFIG, HubOfflineError
from ctiir.backbones.registry import BACKBONES

REPO = Path(__file__).resolve().parents[1]
CLIP_VOCAB = 49408
SENTENCES = [
    "is darker and has long sleeves",
    "Women's shoes with 3 straps, more formal!",
    "a photo of a café",
    "has a red collar and " * 12 + "buttons",  # longer than every context length here: truncated
]


def _images() -> list[Image.Image]:
    """Odd sizes and modes: the transforms must give square RGB tensors from all of them."""
    g = torch.Generator().manual_seed(0)
    rgb = Image.fromarray(torch.randint(0, 256, (91, 37, 3), generator=g, dtype=torch.uint8).numpy())
    gray = Image.fromarray(torch.randint(0, 256, (13, 200), generator=g, dtype=torch.uint8).numpy())
    rgba = Image.fromarray(torch.randint(0, 256, (64, 63, 4), generator=g, dtype=torch.uint8).numpy())
    return [rgb, gray.convert("L"), rgba]


def _batch(backbone) -> torch.Tensor:
    return torch.stack([backbone.eval_transform(img) for img in _images()])


def _outputs(backbone, images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    backbone.eval()
    images = _batch(backbone) if images is None else images
    with torch.no_grad():
        return backbone.encode_image(images), backbone.encode_text(backbone.tokenize(SENTENCES))


def _assert_same_outputs(a, b) -> None:
    images = _batch(a)
    assert torch.equal(images, _batch(b)), "eval transforms differ"
    (ia, ta), (ib, tb) = _outputs(a, images), _outputs(b, images)
    assert torch.equal(ia, ib)
    assert torch.equal(ta, tb)


def _tiny_openclip():
    return build_backbone(f"openclip:{TINY_CONFIG}")


# ---------------------------------------------------------------------------------------------- contract
@pytest.fixture(params=list_backbones())
def backbone(request):
    torch.manual_seed(0)
    return build_backbone(request.param, **BACKBONES.test_kwargs(request.param))


def test_registry_has_the_three_entries():
    assert {"openclip", "tiny", "hf-clip"} <= set(list_backbones())


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as info:
        build_backbone("no-such-backbone")
    for name in list_backbones():
        assert name in str(info.value)


def test_shapes(backbone):
    tokens = backbone.tokenize(SENTENCES)
    assert tokens.dtype == torch.long and tokens.device.type == "cpu"
    assert tokens.ndim == 2 and tokens.shape[0] == len(SENTENCES)
    images, texts = _outputs(backbone)
    assert images.shape == (3, backbone.embed_dim)
    assert texts.shape == (len(SENTENCES), backbone.embed_dim)
    assert torch.isfinite(images).all() and torch.isfinite(texts).all()
    # Unnormalised features: the norms are not all 1.
    assert not torch.allclose(texts.norm(dim=-1), torch.ones(len(SENTENCES)))


def test_transforms_give_square_rgb_tensors(backbone):
    size = backbone.image_size
    for image in _images():
        for transform in (backbone.train_transform, backbone.eval_transform):
            out = transform(image)
            assert out.shape == (3, size, size) and out.dtype == torch.float32
    # DataLoader workers started with spawn pickle the transforms.
    restored = pickle.loads(pickle.dumps(backbone.eval_transform))
    assert torch.equal(restored(_images()[0]), backbone.eval_transform(_images()[0]))
    pickle.dumps(backbone.train_transform)


def test_tokenizer_has_clip_vocabulary(backbone):
    assert backbone.vocab_size == CLIP_VOCAB
    tokens = backbone.tokenize(SENTENCES)
    assert int(tokens.max()) < CLIP_VOCAB
    assert (tokens[:, 0] == 49406).all(), "every row starts with <start_of_text>"
    assert ((tokens == 49407).sum(dim=1) >= 1).all(), "every row has <end_of_text>, truncated or not"
    assert tokens[-1, -1] == 49407, "a truncated row still ends with <end_of_text>"


def test_tokenize_rejects_a_bare_string(backbone):
    with pytest.raises(TypeError, match="list of strings"):
        backbone.tokenize("a single caption")
    with pytest.raises(TypeError, match="item 1"):
        backbone.tokenize(["ok", 3])


def test_spec_round_trip_rebuilds_identical_model(backbone):
    spec = backbone.checkpoint_spec()
    assert spec["pretrained"] is None
    stored = json.loads(json.dumps(spec))
    assert stored == spec, "the spec must survive JSON unchanged"
    rebuilt = build_backbone(**stored)
    rebuilt.load_state_dict(backbone.state_dict(), strict=True)
    assert rebuilt.checkpoint_spec() == spec
    _assert_same_outputs(backbone, rebuilt)


def test_logit_scale_frozen_and_exposed(backbone):
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen and all("logit_scale" in n or "logit_bias" in n for n in frozen)
    assert isinstance(backbone.init_logit_scale, float)
    assert backbone.init_logit_scale == pytest.approx(math.log(1 / 0.07), abs=1e-3)


def _saved_tensors_and_grads(backbone, enable: bool) -> tuple[int, list[torch.Tensor]]:
    backbone.set_grad_checkpointing(enable)
    backbone.train()
    backbone.zero_grad()
    images, tokens = _batch(backbone), backbone.tokenize(SENTENCES)
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = backbone.encode_image(images).square().sum() + backbone.encode_text(tokens).square().sum()
    loss.backward()
    grads = [p.grad.clone() for p in backbone.parameters() if p.requires_grad]
    return saved, grads


def test_grad_checkpointing_saves_memory_and_keeps_gradients(backbone):
    saved_plain, grads_plain = _saved_tensors_and_grads(backbone, enable=False)
    saved_ckpt, grads_ckpt = _saved_tensors_and_grads(backbone, enable=True)
    assert saved_ckpt < saved_plain, "checkpointing should keep fewer activations for backward"
    assert len(grads_ckpt) == len(grads_plain)
    for a, b in zip(grads_plain, grads_ckpt, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads_ckpt)


# ---------------------------------------------------------------------------------------------- tiny
def test_tiny_is_small_and_matches_openclip_config():
    tiny = build_backbone("tiny")
    count = sum(p.numel() for p in tiny.parameters())
    assert 2_000_000 <= count <= 5_000_000
    assert tiny.image_size == 64
    assert tiny.tokenize(["a"]).shape == (1, 32)
    same = _tiny_openclip()
    assert tiny.spec["model_cfg"] == same.spec["model_cfg"]
    assert TINY_CONFIG in open_clip.list_models()


# ---------------------------------------------------------------------------------------------- openclip weights
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openclip_from_weights_file(tmp_path, suffix):
    source = _tiny_openclip()
    path = tmp_path / f"weights{suffix}"
    state = source.model.state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = build_backbone(f"openclip:{TINY_CONFIG}", pretrained=str(path))
    assert loaded.spec["pretrained"] == str(path.resolve())
    _assert_same_outputs(source, loaded)


def test_tiny_from_weights_file(tmp_path):
    source = build_backbone("tiny")
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    _assert_same_outputs(source, build_backbone("tiny", pretrained=str(path)))


def _local_dir(tmp_path: Path, source) -> Path:
    folder = tmp_path / "oc-dir"
    folder.mkdir()
    content = {"model_cfg": source.spec["model_cfg"], "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(content))
    save_file(source.model.state_dict(), folder / "open_clip_model.safetensors")
    return folder


@pytest.mark.parametrize("name", [f"openclip:{TINY_CONFIG}", "openclip", "tiny"])
def test_local_dir_loads_weights_and_preprocessing(tmp_path, name):
    source = _tiny_openclip()
    folder = _local_dir(tmp_path, source)
    loaded = build_backbone(name, pretrained=f"local-dir:{folder}")
    assert loaded.spec["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    # The folder's mean/std are used: a mid-grey image is (0.5 - 0.5) / 0.25 = 0 everywhere (up to 8-bit).
    grey = loaded.eval_transform(Image.new("RGB", (70, 90), (128, 128, 128)))
    assert grey.abs().max() < 0.02
    source_images = torch.stack([loaded.eval_transform(img) for img in _images()])
    assert torch.equal(_outputs(source, source_images)[0], _outputs(loaded, source_images)[0])
    assert torch.equal(_outputs(source)[1], _outputs(loaded)[1])

    # A checkpoint rebuilds without the folder, with the folder's preprocessing.
    spec = json.loads(json.dumps(loaded.checkpoint_spec()))
    shutil.rmtree(folder)
    rebuilt = build_backbone(**spec)
    rebuilt.load_state_dict(loaded.state_dict(), strict=True)
    _assert_same_outputs(loaded, rebuilt)


def test_local_dir_with_another_architecture_than_config_is_an_error(tmp_path):
    folder = _local_dir(tmp_path, _tiny_openclip())
    with pytest.raises(ValueError, match="another architecture"):
        build_backbone("openclip:ViT-B-32", pretrained=f"local-dir:{folder}")


def test_local_dir_without_weights_is_an_error(tmp_path):
    folder = _local_dir(tmp_path, _tiny_openclip())
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        build_backbone("tiny", pretrained=f"local-dir:{folder}")


@pytest.mark.parametrize(
    ("name", "pretrained", "message"),
    [
        (f"openclip:{TINY_CONFIG}", "/no/such/weights.pt", "/no/such/weights.pt"),
        ("tiny", "missing/tiny.safetensors", "missing/tiny.safetensors"),
        ("tiny", "local-dir:/no/such/folder", "/no/such/folder"),
        ("tiny", "openai", "known tags"),
    ],
)
def test_bad_pretrained_names_the_culprit(name, pretrained, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        build_backbone(name, pretrained=pretrained)


def test_corrupt_weights_file_names_the_file(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="broken.pt"):
        build_backbone("tiny", pretrained=str(path))


def test_unknown_open_clip_config():
    with pytest.raises(ValueError, match="ViT-B-32"):
        build_backbone("openclip:ViT-B-32x")


def test_bad_preprocess_cfg():
    with pytest.raises(ValueError, match="colour"):
        build_backbone("tiny", preprocess_cfg={"colour": 1})
    with pytest.raises(ValueError, match="size 128 differs .* 64"):
        build_backbone("tiny", preprocess_cfg={"size": 128})
    squash = build_backbone("tiny", preprocess_cfg={"resize_mode": "squash", "interpolation": "bilinear"})
    assert squash.spec["preprocess_cfg"]["resize_mode"] == "squash"
    # Squash keeps the whole image; the default (shortest side + centre crop) cuts a 2:1 image's left quarter.
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 50, 100))
    squashed = squash.eval_transform(image)
    assert squashed[:, :, :12].mean() > squashed[:, :, 20:].mean() + 1
    cropped = build_backbone("tiny").eval_transform(image)
    assert torch.allclose(cropped[:, :, :12].mean(), cropped[:, :, 20:].mean(), atol=0.05)


# ---------------------------------------------------------------------------------------------- hf-hub:
HUB_ID = "ctiir-test/tiny-clip"
HUB_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}


def _hub_cache(cache: Path, repo_id: str = HUB_ID) -> tuple[object, Path]:
    """A tiny open_clip model in the Hugging Face hub cache layout, as a download would leave it.

    Its text context (24) differs from ctiir-tiny's, so that its tokenizer and architecture can only come
    from the repository's ``open_clip_config.json``.
    """
    model_cfg = json.loads(json.dumps(open_clip.get_model_config(TINY_CONFIG)))
    model_cfg["text_cfg"]["context_length"] = 24
    torch.manual_seed(3)
    source = build_backbone("openclip", model_cfg=model_cfg)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0a1b2c3d"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0a1b2c3d")
    content = {"model_cfg": model_cfg, "preprocess_cfg": HUB_PREPROCESS}
    (snapshot / "open_clip_config.json").write_text(json.dumps(content))
    save_file(source.model.state_dict(), snapshot / "open_clip_model.safetensors")
    return source, snapshot


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("openclip", {"pretrained": f"hf-hub:{HUB_ID}"}), (f"openclip:hf-hub:{HUB_ID}", {})],
    ids=["pretrained", "config"],
)
def test_hf_hub_model_loads_weights_preprocessing_and_tokenizer_from_the_cache(monkeypatch, tmp_path, name, kwargs):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    source, _ = _hub_cache(cache)
    loaded = build_backbone(name, cache_dir=str(cache), **kwargs)

    assert loaded.spec["config"] == f"hf-hub:{HUB_ID}" and loaded.spec["pretrained"] == f"hf-hub:{HUB_ID}"
    assert loaded.spec["model_cfg"] == source.spec["model_cfg"]
    assert loaded.tokenize(SENTENCES).shape == (len(SENTENCES), 24), "the repository's context length"
    assert loaded.spec["preprocess_cfg"]["interpolation"] == "bilinear"
    grey = loaded.eval_transform(Image.new("RGB", (70, 90), (128, 128, 128)))
    assert grey.abs().max() < 0.02, "the repository's mean/std: (0.5 - 0.5) / 0.25 = 0"
    images = torch.stack([loaded.eval_transform(img) for img in _images()])
    assert torch.equal(_outputs(source, images)[0], _outputs(loaded, images)[0]), "the repository's weights"
    assert torch.equal(_outputs(source)[1], _outputs(loaded)[1])
    assert not torch.equal(_outputs(build_backbone("openclip", model_cfg=source.spec["model_cfg"]), images)[0],
                           _outputs(loaded, images)[0]), "a random model would differ"

    # The checkpoint keeps the id and the architecture and rebuilds with the hub cache gone.
    spec = json.loads(json.dumps(loaded.checkpoint_spec()))
    assert spec["config"] == f"hf-hub:{HUB_ID}" and spec["pretrained"] is None
    shutil.rmtree(cache)
    rebuilt = build_backbone(**spec)
    rebuilt.load_state_dict(loaded.state_dict(), strict=True)
    _assert_same_outputs(loaded, rebuilt)


def test_hf_hub_architecture_must_match_a_named_config(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_cache(tmp_path)
    with pytest.raises(ValueError, match="another architecture"):
        build_backbone(f"openclip:{TINY_CONFIG}", pretrained=f"hf-hub:{HUB_ID}", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="different hub models"):
        build_backbone(f"openclip:hf-hub:{HUB_ID}", pretrained="hf-hub:other/model", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="hf-hub:<org>/<name>"):
        build_backbone("openclip", pretrained="hf-hub:no-slash")


@pytest.mark.parametrize("name", ["openclip", f"openclip:hf-hub:{HUB_ID}"])
def test_hf_hub_offline_and_not_cached_names_the_id(monkeypatch, tmp_path, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = {"pretrained": f"hf-hub:{HUB_ID}"} if name == "openclip" else {}
    with pytest.raises(HubOfflineError, match=f"hf-hub:{HUB_ID}") as info:
        build_backbone(name, cache_dir=str(tmp_path / "empty"), **kwargs)
    assert "HF_HUB_OFFLINE" in str(info.value)
    # Config cached but not the weights: the error says which file is missing.
    _, snapshot = _hub_cache(tmp_path / "partial")
    (snapshot / "open_clip_model.safetensors").unlink()
    with pytest.raises(HubOfflineError, match="weights .*open_clip_model.safetensors"):
        build_backbone(name, cache_dir=str(tmp_path / "partial"), **kwargs)


def test_building_says_nothing_about_random_initialisation(caplog):
    """open_clip's "Model initialized randomly" warning came for every checkpoint rebuild; ctiir says what happens."""
    with caplog.at_level("DEBUG", logger="ctiir.backbones.openclip"):  # open_clip's warning: WARNING on the root
        build_backbone("tiny")
    assert not any("initialized randomly" in r.getMessage() for r in caplog.records)
    assert any("weights come from a checkpoint or training" in r.getMessage() for r in caplog.records if r.name.startswith("ctiir"))


# ---------------------------------------------------------------------------------------------- offline hub
def test_hub_sources_offline_fail_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = str(tmp_path / "empty-cache")
    for tag in ("laion2b_s34b_b79k", "openai"):
        with pytest.raises(HubOfflineError, match=tag) as info:
            build_backbone("openclip:ViT-B-32", pretrained=tag, cache_dir=cache)
        assert "HF_HUB_OFFLINE" in str(info.value)
    with pytest.raises(HubOfflineError, match="openai/clip-vit-base-patch32") as info:
        build_backbone("hf-clip", model="openai/clip-vit-base-patch32", cache_dir=cache)
    assert "HF_HUB_OFFLINE" in str(info.value)


def test_hub_sources_offline_in_a_fresh_process(tmp_path):
    """A fresh process, offline: uncached sources fail (bounded by the timeout, no hang), and an ``hf-hub:``
    model is found through ``HF_HUB_CACHE`` alone, with its weights."""
    source, snapshot = _hub_cache(tmp_path / "hub-cache", "ctiir-test/cached-clip")
    script = textwrap.dedent(
        f"""
        import json
        from safetensors.torch import load_file
        from ctiir.backbones import build_backbone
        from ctiir.backbones.openclip import HubOfflineError
        out = {{}}
        for label, kwargs in [
            ("tag", {{"name": "openclip:ViT-B-32", "pretrained": "laion2b_s34b_b79k"}}),
            ("hub-id", {{"name": "hf-clip", "model": "openai/clip-vit-base-patch32"}}),
            ("open_clip-hub", {{"name": "openclip", "pretrained": "hf-hub:ctiir-test/uncached"}}),
        ]:
            try:
                build_backbone(**kwargs)
            except HubOfflineError as err:
                out[label] = str(err)
        cached = build_backbone("openclip:hf-hub:ctiir-test/cached-clip")
        saved = load_file({str(snapshot / "open_clip_model.safetensors")!r})
        state = cached.model.state_dict()
        out["cached"] = all(bool((state[k] == v).all()) for k, v in saved.items()) and len(saved) == len(state)
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hub-cache"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert "laion2b_s34b_b79k" in errors["tag"] and "HF_HUB_OFFLINE" in errors["tag"]
    assert "openai/clip-vit-base-patch32" in errors["hub-id"] and "HF_HUB_OFFLINE" in errors["hub-id"]
    assert "hf-hub:ctiir-test/uncached" in errors["open_clip-hub"] and "HF_HUB_OFFLINE" in errors["open_clip-hub"]
    assert errors["cached"] is True, "the hf-hub: model did not get the weights in HF_HUB_CACHE"


# ---------------------------------------------------------------------------------------------- hf-clip
def _hf_source():
    torch.manual_seed(1)
    return build_backbone("hf-clip", **BACKBONES.test_kwargs("hf-clip"))


def test_hf_clip_from_save_pretrained_dir(tmp_path):
    source = _hf_source()
    folder = tmp_path / "hf-dir"
    source.model.save_pretrained(folder)
    source.tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)

    loaded = build_backbone("hf-clip", model=str(folder))
    assert loaded.spec["preprocess_cfg"]["size"] == 40
    assert loaded.spec["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    grey = loaded.eval_transform(Image.new("RGB", (50, 70), (128, 128, 128)))
    assert grey.shape == (3, 32, 32) and grey.abs().max() < 0.01
    images = torch.stack([loaded.eval_transform(img) for img in _images()])
    assert torch.equal(_outputs(source, images)[0], _outputs(loaded, images)[0])
    assert torch.equal(source.tokenize(SENTENCES), loaded.tokenize(SENTENCES))
    assert torch.equal(_outputs(source)[1], _outputs(loaded)[1])

    # A checkpoint rebuilds without the folder: config and preprocessing live in the spec.
    spec = json.loads(json.dumps(loaded.checkpoint_spec()))
    shutil.rmtree(folder)
    rebuilt = build_backbone(**spec)
    rebuilt.load_state_dict(loaded.state_dict(), strict=True)
    _assert_same_outputs(loaded, rebuilt)


def test_hf_clip_dir_without_tokenizer_uses_clip_bpe(tmp_path):
    source = _hf_source()
    source.model.save_pretrained(tmp_path)
    loaded = build_backbone("hf-clip", pretrained=str(tmp_path))
    assert loaded.vocab_size == CLIP_VOCAB
    assert loaded.spec["preprocess_cfg"]["size"] == loaded.image_size  # CLIP defaults at the model's size
    _assert_same_outputs(source, loaded)


def test_hf_clip_rejects_a_wrong_tokenizer(tmp_path):
    source = _hf_source()
    source.model.save_pretrained(tmp_path)
    CLIPTokenizer().save_pretrained(tmp_path)  # what a failed offline from_pretrained looks like: 2 tokens
    with pytest.raises(ValueError, match="49408"):
        build_backbone("hf-clip", model=str(tmp_path))
    with pytest.raises(ValueError, match="49408"):
        check_tokenizer(CLIPTokenizer(), "an empty tokenizer")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "model= .* or config="),
        ({"model": "/no/such/clip-dir"}, FileNotFoundError, "/no/such/clip-dir"),
        ({"model": "a", "pretrained": "b"}, ValueError, "disagree"),
        ({"preprocess_cfg": {"crop": 3}}, ValueError, "crop"),
        ({"preprocess_cfg": {"crop_size": 100}}, ValueError, "expects 32 px"),
        ({"preprocess_cfg": {"interpolation": "cubic"}}, ValueError, "cubic"),
        ({"config": {"projection_dim": "big"}}, ValueError, "CLIPConfig"),
    ],
)
def test_hf_clip_bad_arguments(kwargs, error, message):
    if "preprocess_cfg" in kwargs:
        kwargs = {**BACKBONES.test_kwargs("hf-clip"), **kwargs}
    with pytest.raises(error, match=message):
        build_backbone("hf-clip", **kwargs)


def test_fallback_tokenizer_matches_open_clip():
    context = 32
    hf = clip_bpe_tokenizer()
    assert len(hf) == CLIP_VOCAB
    ours = hf(SENTENCES, padding="max_length", truncation=True, max_length=context, return_tensors="pt")["input_ids"]
    reference = open_clip.SimpleTokenizer(context_length=context)(SENTENCES)
    for row, ref in zip(ours, reference, strict=True):
        length = int((ref != 0).sum())  # open_clip pads with 0, transformers with <end_of_text>
        assert torch.equal(row[:length], ref[:length])
        assert (row[length:] == 49407).all()
    assert int((reference[-1] != 0).sum()) == context, "the long sentence is truncated in both"


def test_offline_tag_is_found_in_the_hub_cache(monkeypatch, tmp_path):
    """Offline is not 'never': weights already in the hub cache are used, found without a network call."""
    from ctiir.backbones.openclip import _resolve_tag

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    model_cfg = open_clip.get_model_config("ViT-B-32")
    path, tag_cfg = _resolve_tag("ViT-B-32", "laion2b_s34b_b79k", model_cfg, str(tmp_path))
    assert path == str(snapshot / "open_clip_pytorch_model.bin")
    assert tag_cfg["hf_hub"].startswith("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    assert _resolve_tag("ViT-B-32", "laion2b_s34b_b79k", model_cfg, str(tmp_path))[0].endswith(".safetensors")
