"""``ctiir index`` / ``search`` / ``serve`` under the one command-line convention (``ctiir.cliargs``): quick
``--help``, booleans with values, and output decided once by ``ctiir [--verbose]``: quiet by default, yet the
warnings that matter (a skipped image, a library's warning) still reach the user."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ctiir.cli import configure_logging, main
from tests.test_retrieval_index import make_gallery, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
# What `ctiir --verbose` shows and a default run must not: library chatter, and the deprecation warning that
# Lightning's own use of torch raises at every dataloader setup.
NOISE = ("💡 Tip", "Parsing", "Attempting to load config", "SimpleTokenizer", "architecture only", "LeafSpec", "Traceback")


pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt")


def test_help_does_not_import_torch() -> None:
    script = (
        "import sys\nfrom ctiir.cli import main\n"
        "for command in ('index', 'search', 'serve'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
        "print('MODULES', 'lightning' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "MODULES False False" in out.stdout
    assert out.stdout.count("--device") >= 2 and "--progress_bar" in out.stdout and "--update {true,false}" in out.stdout


def test_index_and_search_are_quiet_by_default(ckpt: Path, tmp_path: Path) -> None:
    """The real CLI in a fresh process (logging configured once, at entry, as a user's shell gets it): results
    on stdout; on stderr the skipped image by name and Lightning's device lines, and no library chatter."""
    gallery = make_gallery(tmp_path / "gallery")
    (gallery / "broken.png").write_bytes(b"not an image")
    index = ["index", f"--ckpt={ckpt}", f"--images={gallery}", f"--out={tmp_path / 'index'}", "--accelerator=cpu", "--progress_bar=false"]
    search = ["search", f"--ckpt={ckpt}", f"--index={tmp_path / 'index'}", "--text=is red", "-k", "3", "--device=cpu"]
    script = f"import sys\nfrom ctiir.cli import main\nsys.exit(main({index!r}) or main({search!r}))"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "8 images (8 encoded" in out.stdout and "1 unreadable images skipped" in out.stdout
    assert "┃ rank ┃" in out.stdout and out.stdout.count("│") >= 3 * 4
    err = out.stderr.splitlines()
    assert any("skipped 1 unreadable images" in line for line in err), out.stderr
    assert any("broken.png" in line for line in err), out.stderr
    assert not [line for line in err if any(noise in line for noise in NOISE)], out.stderr
    assert len(err) <= 8, out.stderr  # the skip (2 lines) and Lightning's device lines, nothing more


def test_warnings_reach_the_user_and_update_takes_a_value(ckpt: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A warning raised while a command works is not swallowed (the commands once silenced every warning);
    ``--update=true`` keeps unchanged embeddings, ``--update=false`` rebuilds (``update`` is also a method of
    jsonargparse's Namespace: reading the option wrongly would make every build an update)."""
    import ctiir.retrieval.indexer as indexer
    import ctiir.retrieval.retriever as retriever

    def loads_with_a_warning(real):
        def load(*args, **kwargs):
            warnings.warn("probe: a warning raised while the checkpoint loads", UserWarning, stacklevel=2)
            return real(*args, **kwargs)

        return load

    monkeypatch.setattr(indexer, "load_stage", loads_with_a_warning(indexer.load_stage))
    monkeypatch.setattr(retriever, "load_stage", loads_with_a_warning(retriever.load_stage))
    gallery = make_gallery(tmp_path / "gallery")
    index = ["index", f"--ckpt={ckpt}", f"--images={gallery}", f"--out={tmp_path / 'index'}", "--accelerator=cpu", "--progress_bar=false"]
    with pytest.warns(UserWarning, match="probe"):
        assert main(index) == 0
    assert "(8 encoded; 0 unchanged" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="probe"):
        assert main(["search", f"--ckpt={ckpt}", f"--index={tmp_path / 'index'}", "--text=red", "--device=cpu", "--json=true"]) == 0
    capsys.readouterr()
    monkeypatch.undo()
    assert main([*index, "--update=true"]) == 0
    assert "(0 encoded; 8 unchanged" in capsys.readouterr().out
    assert main([*index, "--update=false"]) == 0
    assert "(8 encoded; 0 unchanged" in capsys.readouterr().out


def test_only_the_library_internal_deprecation_is_hidden_and_verbose_shows_it() -> None:
    internal = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead."

    def shown() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn(internal, FutureWarning, stacklevel=1)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
            warnings.warn("a UserWarning", UserWarning, stacklevel=1)
        return [str(w.message) for w in caught]

    warnings.simplefilter("always")  # the test's own starting point: every warning shown (restored by the fixture)
    configure_logging(verbose=False)
    assert shown() == ["another FutureWarning", "a UserWarning"]
    configure_logging(verbose=True)
    assert shown() == [internal, "another FutureWarning", "a UserWarning"]
