"""Recall@K engines side by side: ctiir's chunked ranks, a full sort, torchmetrics, and faiss if installed.

Each (method, size) runs in a fresh process so its peak memory is its own: on CPU the peak resident set
above what the inputs already took (Linux ``VmHWM`` after a reset, else ``ru_maxrss``), on CUDA
``torch.cuda.max_memory_allocated`` above the inputs. Data: L2-normalised random galleries, each query a
noisy copy of its target, so the recalls are neither 0 nor 100. Baselines that would need more than
``--max-gb`` (they hold the whole Q x G score matrix, and more) are skipped and say so.

    python benchmarks/bench_recall.py                       # 2k x 6k and 10k x 50k, D=512, CPU
    python benchmarks/bench_recall.py --device cuda --max-gb 60
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_module
import resource
import sys
import time
from pathlib import Path
from typing import Any

KS = (1, 10, 50)
METHODS = ("ctiir-chunked", "full-sort", "torchmetrics", "faiss-flat-ip")


# ---------------------------------------------------------------------------------------------- engines
def make_data(num_queries: int, size: int, dim: int, device: str, seed: int = 0) -> tuple[Any, Any, Any]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    gallery = F.normalize(torch.randn(size, dim, generator=g), dim=1)
    target = torch.randint(0, size, (num_queries,), generator=g)
    noise = 5.0 * torch.randn(num_queries, dim, generator=g) / dim**0.5  # cos(query, target) ~ 0.2
    queries = F.normalize(gallery[target] + noise, dim=1)
    return queries.to(device), gallery.to(device), target.to(device)


def run_ctiir(queries, gallery, target, chunk_size: int) -> dict[int, float]:
    from ctiir.metrics import recall_at_k, retrieval_ranks

    return recall_at_k(retrieval_ranks(queries, gallery, target, chunk_size=chunk_size), KS)


def run_full_sort(queries, gallery, target, chunk_size: int) -> dict[int, float]:
    """The textbook way: the whole score matrix, every row sorted, the target's position read off."""
    scores = queries @ gallery.t()
    order = scores.argsort(dim=1, descending=True)
    ranks = (order == target[:, None]).int().argmax(dim=1)
    return {k: 100.0 * (ranks < k).double().mean().item() for k in KS}


def run_torchmetrics(queries, gallery, target, chunk_size: int) -> dict[int, float]:
    """torchmetrics' RetrievalRecall on shifted scores (it ignores targets scoring <= 0 since v1.8)."""
    import torch
    from torchmetrics.retrieval import RetrievalRecall

    scores = queries @ gallery.t() + 2
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[torch.arange(len(target), device=target.device), target] = True
    indexes = torch.arange(len(target), device=target.device)[:, None].expand_as(scores).reshape(-1)
    out = {}
    for k in KS:
        metric = RetrievalRecall(top_k=k).to(scores.device)
        metric.update(scores.reshape(-1), relevant.reshape(-1), indexes)
        out[k] = 100.0 * float(metric.compute())
    return out


def run_faiss(queries, gallery, target, chunk_size: int) -> dict[int, float]:
    """faiss' exact inner-product index (CPU), top-max(K) search."""
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery.cpu().numpy()))
    _, found = index.search(np.ascontiguousarray(queries.cpu().numpy()), max(KS))
    hit_at = (found == target.cpu().numpy()[:, None]).argmax(axis=1)
    hit = (found == target.cpu().numpy()[:, None]).any(axis=1)
    return {k: 100.0 * float((hit & (hit_at < k)).mean()) for k in KS}


ENGINES = {"ctiir-chunked": run_ctiir, "full-sort": run_full_sort, "torchmetrics": run_torchmetrics, "faiss-flat-ip": run_faiss}


def needed_gb(method: str, num_queries: int, size: int) -> float:
    """Rough extra memory of a method: the full-matrix ones hold Q x G scores and more."""
    cells = num_queries * size
    per_cell = {"full-sort": 4 + 8 + 8, "torchmetrics": 4 + 1 + 8 + 4 + 8 + 8}.get(method, 0)
    return cells * per_cell / 2**30


# ---------------------------------------------------------------------------------------------- measuring
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(method: str, num_queries: int, size: int, dim: int, device: str, chunk_size: int, queue: Any) -> None:
    """Child process: build the inputs, then time one run and record its own peak memory."""
    try:
        import torch

        queries, gallery, target = make_data(num_queries, size, dim, device)
        engine = ENGINES[method]
        engine(queries[:8], gallery[:64], target[:8] % 64, chunk_size)  # warm-up: imports, kernels, handles
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            exact = _reset_peak_rss()
            base_kb = _status_kb("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        recall = engine(queries, gallery, target, chunk_size)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if device == "cuda":
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak_kb = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak_mb = max(0, (peak_kb or 0) - (base_kb or 0)) / 1024
        queue.put({"seconds": seconds, "peak_mb": peak_mb, "recall": recall})
    except Exception as err:  # noqa: BLE001 - reported in the table, the other methods still run
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_one(method: str, num_queries: int, size: int, args: argparse.Namespace) -> dict[str, Any]:
    if method == "faiss-flat-ip":
        try:
            import faiss  # noqa: F401
        except ImportError:
            return {"skipped": "faiss not installed (pip install faiss-cpu)"}
    gb = needed_gb(method, num_queries, size)
    if gb > args.max_gb:
        return {"skipped": f"needs ~{gb:.0f} GB > --max-gb {args.max_gb:g}"}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(method, num_queries, size, args.dim, args.device, args.chunk_size, queue))
    proc.start()
    try:
        result = queue.get(timeout=args.timeout)
    except queue_module.Empty:  # the child hung or died
        result = {"error": f"no result within {args.timeout} s (exit code {proc.exitcode})"}
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
    return result


# ---------------------------------------------------------------------------------------------- main
def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        q, _, g = part.lower().partition("x")
        if not q.isdigit() or not g.isdigit():
            raise SystemExit(f"--sizes: {part!r} is not QxG (e.g. 2000x6000)")
        sizes.append((int(q), int(g)))
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000x6000,10000x50000", help="comma-separated QxG")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip baselines needing more memory than this")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per (method, size)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    import torch
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Recall@K engines, D={args.dim}, device={args.device}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} CPU threads")
    for col in ("Q x G", "method", "time (s)", "peak extra memory (MB)", *(f"R@{k}" for k in KS), "note"):
        table.add_column(col, justify="right" if col not in ("method", "note") else "left")
    console = Console(width=max(140, Console().width))
    for num_queries, size in parse_sizes(args.sizes):
        reference: dict[int, float] | None = None
        for method in methods:
            result = run_one(method, num_queries, size, args)
            label = f"{num_queries:,} x {size:,}"
            if "recall" not in result:
                table.add_row(label, method, "-", "-", *("-" for _ in KS), result.get("skipped") or result.get("error", ""))
                continue
            recall = {int(k): v for k, v in result["recall"].items()}
            reference = reference or recall
            same = all(abs(recall[k] - reference[k]) < 1e-3 for k in KS)  # torchmetrics returns float32
            table.add_row(
                label, method, f"{result['seconds']:.3f}", f"{result['peak_mb']:.0f}",
                *(f"{recall[k]:.2f}" for k in KS), "" if same else "differs from the first method",
            )
            console.print(f"done: {label} {method} {result['seconds']:.3f} s", style="dim")
    console.print(table)


if __name__ == "__main__":
    main()
