"""A Stage III run on two "nodes", simulated on this machine the way docs/multinode.md runs it on real ones.

Two ``torchrun --nnodes=2 --nproc_per_node=1`` launchers (node rank 0 and 1, static rendezvous on 127.0.0.1)
each start ``ctiir fit -c stage3 --trainer.num_nodes=2 --trainer.devices=1 --trainer.strategy=ddp`` on the
CPU (gloo). Each rank saves what it saw; the test checks that the contrastive negatives came from both nodes
(``train/keys_per_query`` is the global batch) and that both ranks end with the same, trained, weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "examples" / "slurm" / "stage3.sbatch"
BATCH = 4
STEPS = 3


class SaveRankState(Callback):
    """Writes, per global rank, the weights before and after training and the last logged metrics."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _state(self, pl_module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(self._state(pl_module), self.out_dir / f"start-rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        rank = trainer.global_rank
        torch.save(self._state(pl_module), self.out_dir / f"end-rank{rank}.pt")
        info = {
            "global_rank": rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "steps": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(info))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_stage_three_on_two_torchrun_nodes(tmp_path: Path) -> None:
    from ctiir.datamodules.synthetic import generate

    root = generate(tmp_path / "synth", seed=0, size="tiny", progress=False)
    out = tmp_path / "ranks"
    out.mkdir()
    probe = {"class_path": "tests.test_multinode.SaveRankState", "init_args": {"out_dir": str(out)}}
    stage = [
        "-m", "ctiir.cli", "fit", "-c", "stage3",
        f"--data.root={root}", "--data.size=tiny", f"--data.batch_size={BATCH}", "--data.num_workers=0",
        "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.num_nodes=2", "--trainer.devices=1",
        f"--trainer.max_steps={STEPS}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path / 'run'}", f"--trainer.callbacks=[{json.dumps(probe)}]",
    ]
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={node}", "--rdzv_backend=static", "--master_addr=127.0.0.1", f"--master_port={port}",
             *stage],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]
    try:
        logs = [launcher.communicate(timeout=300)[0] for launcher in launchers]
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
    for node, launcher in enumerate(launchers):
        assert launcher.returncode == 0, f"node {node}:\n{logs[node][-4000:]}"

    infos = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(i["global_rank"], i["node_rank"], i["world_size"]) for i in infos] == [(0, 0, 2), (1, 1, 2)]
    for info in infos:
        assert info["steps"] == STEPS
        assert info["metrics"]["train/keys_per_query"] == 2 * BATCH, "each query scored against both nodes' targets"

    start = torch.load(out / "start-rank0.pt")
    ends = [torch.load(out / f"end-rank{rank}.pt") for rank in (0, 1)]
    assert ends[0].keys() == ends[1].keys()
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0]), "the two nodes' weights diverged"
    assert any(not torch.equal(start[k], ends[0][k]) for k in start), "no step changed the weights"


def test_slurm_example_is_a_valid_ctiir_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sbatch script, run by bash with SLURM's variables and a stand-in ``srun``, gives a command line that
    ctiir parses into a 2-node x 4-device DDP config (what srun would start on every task)."""
    from ctiir.cli import main

    slurm = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "8"}
    env = {"PATH": os.environ["PATH"], **slurm, "DATA": "/shared/fashioniq", "INIT": "/shared/stage2/best.ckpt"}
    srun = 'srun() { printf "%s\\0" "$@"; }; source "$1"'
    out = subprocess.run(["bash", "-c", srun, "bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    args = out.stdout.split("\0")[:-1]
    assert args[:2] == ["ctiir", "fit"], args
    with pytest.raises(SystemExit) as exit_info:
        main([*args[1:], "--print_config"])
    assert exit_info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    trainer = config["trainer"]
    assert (trainer["num_nodes"], int(trainer["devices"]), trainer["strategy"]) == (2, 4, "ddp")  # devices: "4" is a count
    assert trainer["default_root_dir"].endswith("runs/stage3-42")
    assert config["data"]["init_args"]["root"] == "/shared/fashioniq" and config["data"]["init_args"]["num_workers"] == 8
    assert config["model"]["init_args"]["init_from"] == "/shared/stage2/best.ckpt"
