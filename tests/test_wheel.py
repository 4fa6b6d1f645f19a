"""The built wheel carries the package data (the tiny backbone's config, the example configs, the license) and its
console script works outside the checkout, named configs included."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("ctiir-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ctiir/backbones/configs/ctiir-tiny.json" in names, names
    configs = sorted(p.name for p in (ROOT / "ctiir" / "configs").glob("*.yaml"))
    assert len(configs) >= 7 and all(f"ctiir/configs/{name}" in names for name in configs), names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # Reuse the dependencies installed here: a plain path entry exposes them, but not this checkout's
    # editable install (editable finders are .pth files, which a path entry does not run).
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    help_out = subprocess.run([str(env_dir / "bin" / "ctiir"), "--help"], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert help_out.returncode == 0, help_out.stderr
    for command in ("fit", "progressive", "synth", "check-data"):
        assert command in help_out.stdout
    where = subprocess.run(
        [str(py), "-c", "import ctiir, ctiir.backbones as b; m = b.build_backbone('tiny'); print(ctiir.__file__, m.embed_dim)"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300,
    )
    assert where.returncode == 0, where.stderr
    assert str(env_dir) in where.stdout, f"ctiir was imported from {where.stdout!r}, not from the installed wheel"

    # A config named, not pathed, from a folder without one: found inside the installed package.
    ctiir = str(env_dir / "bin" / "ctiir")
    printed = subprocess.run([ctiir, "config", "stage3"], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (ROOT / "ctiir" / "configs" / "stage3.yaml").read_text()
    fit = subprocess.run(
        [ctiir, "fit", "-c", "stage3", "--data.root", str(outside / "data"), "--print_config"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    config = yaml.safe_load(fit.stdout)
    assert config["model"]["class_path"] == "ctiir.stages.ComposedRetrieval"
    assert config["trainer"]["max_epochs"] == 6, "the packaged stage3 config's value"
