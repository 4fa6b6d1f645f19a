"""Search speed: exact (chunked matmul + top-k) and FAISS flat / HNSW / IVF on random galleries.

    python benchmarks/bench_search.py                       # 10k, 100k, 1M x 512, float32 and float16
    python benchmarks/bench_search.py --sizes 10000 --backends exact hnsw

Each (size, dtype, backend) runs in a fresh child process, so its peak memory (ru_maxrss) is its own.
The gallery is a random Gaussian mixture (``n / 100`` centres, unit vectors): real embedding galleries are
clustered, and on isotropic random vectors the 10 nearest neighbours are barely nearer than the rest, so
no approximate index reaches a useful recall there. Queries are fresh draws from the same mixture.

Reported per row: single-query latency p50/p99 (``--single`` queries one at a time), batched queries per
second (batches of 64), peak RSS, recall@10 against exact search, and for exact search the p50 latency as a
ratio to the memory-bandwidth floor: the gallery's bytes divided by this machine's copy bandwidth, measured
in the same child right before (``dst.copy_(src)`` of a buffer of the gallery's size, at least 256 MiB and at
most 1 GiB; bytes copied per second).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def clustered_gallery(n: int, dim: int, seed: int, spread: float = 0.6) -> tuple[Any, Any]:
    """(gallery (n, dim) float32 unit vectors, centres) of a Gaussian mixture with n / 100 centres."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(max(1, n // 100), dim, generator=g), dim=1)
    out = torch.empty(n, dim)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        which = torch.randint(0, centres.shape[0], (m,), generator=g)
        noise = torch.randn(m, dim, generator=g) * (spread / dim**0.5)
        out[start : start + m] = F.normalize(centres[which] + noise, dim=1)
    return out, centres


def queries_from(centres: Any, count: int, dim: int, seed: int, spread: float = 0.6) -> Any:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed + 1)
    which = torch.randint(0, centres.shape[0], (count,), generator=g)
    return F.normalize(centres[which] + torch.randn(count, dim, generator=g) * (spread / dim**0.5), dim=1)


def copy_bandwidth(nbytes: int) -> float:
    """Bytes copied per second by ``dst.copy_(src)`` for a buffer of ``nbytes`` (best of 5)."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return nbytes / best


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def timed(search: Any, queries: Any, args: argparse.Namespace) -> dict[str, float]:
    """Single-query p50/p99 (ms) and batched queries per second of ``search``."""
    search(queries[:1])  # warm-up
    latencies = []
    for i in range(args.single):
        start = time.perf_counter()
        search(queries[i : i + 1])
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    for b in range(args.batches):
        search(queries[b * args.batch : (b + 1) * args.batch])
    qps = args.batch * args.batches / (time.perf_counter() - start)
    return {"p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3, "qps_batch64": qps}


def child(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from ctiir.retrieval.exact import exact_topk

    torch.set_num_threads(args.threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dtype = {"float32": torch.float32, "float16": torch.float16}[args.dtype]
    gallery32, centres = clustered_gallery(args.size, args.dim, seed=0)
    queries = queries_from(centres, max(args.single, args.batch * args.batches, args.recall_queries), args.dim, seed=0)
    gallery = gallery32.to(dtype)
    if dtype != torch.float32:
        del gallery32
        gallery32 = None
    nbytes = gallery.numel() * gallery.element_size()
    common: dict[str, Any] = {"size": args.size, "dtype": args.dtype, "backend": args.backend, "gallery_mb": nbytes / 2**20}
    _, truth = exact_topk(queries[: args.recall_queries], gallery, 10)
    rows: list[dict[str, Any]] = []

    if args.backend == "exact":
        # a buffer well beyond the caches (a 20 MB gallery partly fits in L3, where "bandwidth" means little)
        bandwidth = copy_bandwidth(min(max(nbytes, 256 << 20), 1 << 30))
        row = {**common, "build_s": 0.0, "recall@10": 1.0, "knob": "", **timed(lambda q: exact_topk(q, gallery, 10), queries, args)}
        row["copy_gbs"] = bandwidth / 1e9
        row["floor_ms"] = nbytes / bandwidth * 1e3
        row["x_floor"] = row["p50_ms"] / row["floor_ms"]
        rows.append(row)
    else:
        import faiss

        from ctiir.retrieval.ann import FaissOptions, build_faiss, configure, faiss_search

        faiss.omp_set_num_threads(args.threads)
        options = FaissOptions(backend=args.backend, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
        source = gallery32 if gallery32 is not None else gallery
        start = time.perf_counter()
        index = build_faiss(source, options, fp16=dtype == torch.float16)
        build_s = time.perf_counter() - start
        del source

        def search(q: Any) -> Any:
            return faiss_search(index, q, 10)

        knobs = {"hnsw": [("efSearch", v, {"ef_search": v}) for v in args.ef_search],
                 "ivf": [("nprobe", v, {"nprobe": v}) for v in args.nprobe]}.get(args.backend, [("", "", {})])
        for name, value, change in knobs:
            configure(index, FaissOptions(**{**options.to_dict(), **change}))
            approx = search(queries[: args.recall_queries])[1]
            hits = (approx.unsqueeze(2) == truth.unsqueeze(1)).any(dim=1).sum().item()
            knob = f"{name}={value}" if name else ""
            rows.append({**common, "build_s": build_s, "recall@10": hits / truth.numel(), "knob": knob, **timed(search, queries, args)})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_mb"] = peak
        row["base_rss_mb"] = base_rss / 1024
    return rows


def run_child(argv: list[str], timeout: float) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # a list of rows


def table(rows: list[dict[str, Any]]) -> str:
    head = "| gallery | dtype | backend | query knob | build s | p50 ms | p99 ms | qps (batch 64) | recall@10 | peak RSS MiB | exact p50 / floor (floor ms, copy GB/s) |"
    lines = [head, "|---" * 11 + "|"]
    for r in rows:
        floor = f"{r['x_floor']:.2f}x ({r['floor_ms']:.1f} ms, {r['copy_gbs']:.1f})" if "x_floor" in r else ""
        lines.append(
            f"| {r['size']:,} | {r['dtype']} | {r['backend']} | {r['knob']} | {r['build_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['qps_batch64']:.0f} | {r['recall@10']:.3f} | {r['peak_rss_mb']:.0f} | {floor} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    p.add_argument("--backends", nargs="+", default=["exact", "flat", "hnsw", "ivf"], choices=["exact", "flat", "hnsw", "ivf"])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--single", type=int, default=100, help="single queries timed one by one")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--recall_queries", type=int, default=200)
    p.add_argument("--hnsw_m", type=int, default=32)
    p.add_argument("--ef_construction", type=int, default=80)
    p.add_argument("--ef_search", type=int, nargs="+", default=[128, 512], help="HNSW query beams, each a row (one build)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="IVF probes, each a row (one build)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--json", type=str, default=None, help="also write the rows to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    shared = [f"--{k}={getattr(args, k)}" for k in ("dim", "single", "batch", "batches", "recall_queries", "hnsw_m", "ef_construction", "threads")]
    shared += ["--ef_search", *map(str, args.ef_search), "--nprobe", *map(str, args.nprobe)]
    rows = []
    for size in args.sizes:
        for dtype in args.dtypes:
            for backend in args.backends:
                for row in run_child([f"--size={size}", f"--dtype={dtype}", f"--backend={backend}", *shared], args.timeout):
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"hnsw M={args.hnsw_m} efConstruction={args.ef_construction}; ivf nlist=4*sqrt(N); d={args.dim}; {args.threads} threads")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
