"""Recall@K side by side: ctiir's ranks against torchmetrics, a full argsort, faiss and a bare GEMM.

Every method must compute the Q x G dot products, so a bare GEMM of the same size is the floor: each
method's time is also given as a ratio to it. The floor is chunked like ctiir (``--chunk-size`` queries
against the whole gallery per product), since a 20k x 1M score matrix does not fit in memory.

Each (case, method) runs in a fresh process, so its peak memory is its own: on CPU the peak resident set
above what the process held once its inputs were built (Linux ``VmHWM`` after a reset), on CUDA
``torch.cuda.max_memory_allocated`` above the inputs. Methods that would need more than ``--max-gb`` (the
full-matrix baselines at large sizes) are skipped, saying how much they would need.

Every method receives the same raw embeddings and normalises them itself, and ranks with one rule:
a query's rank is the number of other gallery items scoring at least as high as its target (ties count
against the target). ctiir does that by counting. The sort-based baselines get the same rule by lowering
each target's score by one float32 step (``torch.nextafter``), so that it sorts after every item that
ties with it; faiss, which returns the top max(K)+1 with their scores, by counting the returned items
that score at least the target's. "same as ctiir" compares the number of hits at every K.

Data: random Gaussian embeddings, each query a noisy copy of its target (recall neither 0 nor 100); and
one case with exact ties ("ties"): sparse +-1 vectors whose scores are exact multiples of 1/64 in any
summation order, so many different items tie with a target exactly, plus copied gallery rows, among
them copies of targets. Under that case, a plain argsort (no tie rule) is also scored, to show that the
check can fail.

    python benchmarks/bench_recall.py --quick                 # the two small sizes, a few minutes
    python benchmarks/bench_recall.py --before 9cc252e        # every size, and ctiir as of that commit
    python benchmarks/bench_recall.py --device cuda --max-gb 60
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import queue as queue_module
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KS = (1, 10, 50)
REPO = Path(__file__).resolve().parents[1]
METHODS = ("gemm", "ctiir", "ctiir-before", "full-argsort", "torchmetrics", "faiss", "gemm-numpy")
LABELS = {
    "gemm": "bare GEMM (floor)",
    "ctiir": "ctiir `retrieval_ranks` + `recall_at_k`",
    "ctiir-before": "ctiir at {before}",
    "full-argsort": "full argsort (CLIP4Cir-style)",
    "torchmetrics": "torchmetrics `RetrievalRecall`",
    "faiss": "faiss `IndexFlatIP` top-51",
    "gemm-numpy": "bare GEMM in numpy (OpenBLAS)",
}


@dataclass(frozen=True)
class Case:
    num_queries: int
    size: int
    data: str  # "random" or "ties"

    @property
    def label(self) -> str:
        return f"{_short(self.num_queries)} x {_short(self.size)}"


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


QUICK = (Case(2000, 10_000, "ties"), Case(2000, 10_000, "random"), Case(4000, 50_000, "random"))
FULL = (*QUICK, Case(6000, 100_000, "random"), Case(20_000, 1_000_000, "random"))


# ---------------------------------------------------------------------------------------------- data
def make_data(case: Case, dim: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """Raw (not normalised) queries (Q, D), gallery (G, D) and each query's target position (Q,)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    q, size = case.num_queries, case.size
    target = torch.randint(0, size, (q,), generator=g)
    if case.data == "random":
        gallery = torch.randn(size, dim, generator=g)
        noise = 5.0 * torch.randn(q, dim, generator=g) / dim**0.5  # cos(query, target) ~ 0.2
        return F.normalize(gallery[target], dim=1) + noise, gallery, target
    gallery = _sparse_signs(size, dim, 64, g)
    # copies: 5% of the items are overwritten by copies of others, and a tenth of the targets get a copy
    src = torch.randint(0, size, (size // 20,), generator=g)
    dst = torch.randint(0, size, (size // 20,), generator=g)
    gallery[dst] = gallery[src]
    copied = target[torch.randperm(q, generator=g)[: q // 10]]
    gallery[torch.randint(0, size, (copied.shape[0],), generator=g)] = gallery[copied]
    # a query keeps 10 of its target's 64 signs and puts 54 random signs anywhere else: 64 non-zeros, norm 8
    queries = torch.zeros(q, dim)
    for i, t in enumerate(target.tolist()):
        support = gallery[t].nonzero().flatten()
        kept = support[torch.randperm(support.shape[0], generator=g)[:10]]
        others = torch.ones(dim, dtype=torch.bool)
        others[kept] = False
        elsewhere = others.nonzero().flatten()[torch.randperm(dim - 10, generator=g)[:54]]
        queries[i, kept] = gallery[t, kept]
        queries[i, elsewhere] = torch.randint(0, 2, (54,), generator=g).float() * 2 - 1
    return queries, gallery, target


def _sparse_signs(n: int, dim: int, nonzero: int, g: Any) -> Any:
    import torch

    rows = torch.zeros(n, dim)
    cols = torch.rand(n, dim, generator=g).argsort(dim=1)[:, :nonzero]
    signs = torch.randint(0, 2, (n, nonzero), generator=g).float() * 2 - 1
    return rows.scatter_(1, cols, signs)


# ---------------------------------------------------------------------------------------------- methods
def hits_of_ranks(ranks: Any) -> dict[int, int]:
    return {k: int((ranks < k).sum()) for k in KS}


def run_gemm(queries, gallery, target, args) -> dict[int, int] | None:
    """The floor: the products alone, ``chunk_size`` queries at a time into one reused buffer."""
    import torch

    q = torch.nn.functional.normalize(queries, dim=1)
    out = torch.empty(min(args.chunk_size, q.shape[0]), gallery.shape[0], device=q.device)
    for start in range(0, q.shape[0], args.chunk_size):
        block = q[start : start + args.chunk_size]
        torch.mm(block, gallery.t(), out=out[: block.shape[0]])
    return None


def run_gemm_numpy(queries, gallery, target, args) -> dict[int, int] | None:
    """The same floor through numpy's BLAS (OpenBLAS in the wheels), which faiss' wheels also use."""
    import numpy as np
    import torch

    q = torch.nn.functional.normalize(queries, dim=1).cpu().numpy()
    g = gallery.cpu().numpy()
    out = np.empty((min(args.chunk_size, q.shape[0]), g.shape[0]), dtype=np.float32)
    for start in range(0, q.shape[0], args.chunk_size):
        block = q[start : start + args.chunk_size]
        np.matmul(block, g.T, out=out[: block.shape[0]])
    return None


def run_ctiir(queries, gallery, target, args, module: Any = None) -> dict[int, int]:
    if module is None:
        from ctiir.metrics import functional as module
    recall = module.recall_at_k(module.retrieval_ranks(queries, gallery, target, chunk_size=args.chunk_size), KS)
    return {k: round(v * queries.shape[0] / 100) for k, v in recall.items()}


def _scores_with_tie_rule(queries, gallery, target) -> Any:
    """The whole Q x G cosine matrix, each target's score lowered by one float32 step: sorted after
    every item that ties with it, before every item strictly below it."""
    import torch
    import torch.nn.functional as F

    scores = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).t()
    rows = torch.arange(scores.shape[0], device=scores.device)
    own = scores[rows, target]
    scores[rows, target] = torch.nextafter(own, torch.full_like(own, -math.inf))
    return scores


def run_full_argsort(queries, gallery, target, args) -> dict[int, int]:
    """CLIP4Cir's evaluation: every row of the score matrix sorted, hits read off the first K places."""
    scores = _scores_with_tie_rule(queries, gallery, target)
    order = scores.argsort(dim=1, descending=True)
    labels = order[:, : max(KS)] == target[:, None]
    return {k: int(labels[:, :k].any(dim=1).sum()) for k in KS}


def run_plain_argsort(queries, gallery, target) -> dict[int, int]:
    """The same without the tie rule: ties are broken by the sort's order (not timed; ties case only)."""
    import torch.nn.functional as F

    scores = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).t()
    labels = scores.argsort(dim=1, descending=True)[:, : max(KS)] == target[:, None]
    return {k: int(labels[:, :k].any(dim=1).sum()) for k in KS}


def run_torchmetrics(queries, gallery, target, args) -> dict[int, int]:
    """``RetrievalRecall`` for each K in one collection (they share the stored Q x G scores)."""
    import torch
    from torchmetrics import MetricCollection
    from torchmetrics.retrieval import RetrievalRecall

    scores = _scores_with_tie_rule(queries, gallery, target)
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    rows = torch.arange(scores.shape[0], device=scores.device)
    relevant[rows, target] = True
    indexes = rows[:, None].expand_as(scores)
    metrics = MetricCollection({f"R@{k}": RetrievalRecall(top_k=k) for k in KS}).to(scores.device)
    metrics.update(scores.reshape(-1), relevant.reshape(-1), indexes=indexes.reshape(-1))
    values = metrics.compute()
    # torchmetrics averages 0/1 per query in float32; times Q, rounded, that is the exact count of hits
    return {k: round(float(values[f"R@{k}"]) * scores.shape[0]) for k in KS}


def run_faiss(queries, gallery, target, args) -> dict[int, int]:
    """Exact inner-product search for the top max(K)+1; the rank counts returned items at or above the
    target's score (a target outside the list, or behind a full list of ties, misses at every K)."""
    import faiss
    import numpy as np
    import torch.nn.functional as F

    q = np.ascontiguousarray(F.normalize(queries, dim=1).cpu().numpy())
    index = faiss.IndexFlatIP(q.shape[1])
    index.add(np.ascontiguousarray(F.normalize(gallery, dim=1).cpu().numpy()))
    scores, found = index.search(q, max(KS) + 1)
    is_target = found == target.cpu().numpy()[:, None]
    own = np.where(is_target.any(axis=1), np.where(is_target, scores, -np.inf).max(axis=1), np.inf)
    ranks = (scores >= own[:, None]).sum(axis=1) - 1
    ranks[~is_target.any(axis=1)] = max(KS)
    return hits_of_ranks(ranks)


ENGINES = {
    "gemm": run_gemm,
    "ctiir": run_ctiir,
    "ctiir-before": run_ctiir,
    "full-argsort": run_full_argsort,
    "torchmetrics": run_torchmetrics,
    "faiss": run_faiss,
    "gemm-numpy": run_gemm_numpy,
}


def needed_gb(method: str, case: Case, dim: int, chunk_size: int) -> float:
    """Rough peak extra memory: the full-matrix baselines hold Q x G scores and more."""
    cells = case.num_queries * case.size
    chunk_cells = min(chunk_size, case.num_queries) * case.size
    per = {
        "gemm": chunk_cells * 4,
        "gemm-numpy": chunk_cells * 4,
        # scores, their mask, its int64 copy for the sum (and an int32 one where the gallery has copies),
        # the normalised gallery (measured: 14.4 GiB at 20k x 1M)
        "ctiir-before": chunk_cells * (17 if case.data == "ties" else 13) + case.size * dim * 4,
        "full-argsort": cells * 16,  # scores and the argsort's int64 output (measured: 3.0 GiB at 4k x 50k)
        "torchmetrics": cells * 90,  # scores, relevance, int64 indexes, sorted copies (1.7 GiB at 2k x 10k)
    }
    return per.get(method, 0) / 2**30


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


def _module_at(revision: str) -> types.ModuleType:
    """``ctiir/metrics/functional.py`` as it was at ``revision``, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:ctiir/metrics/functional.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("ctiir_functional_before")
    exec(compile(source, f"{revision}:ctiir/metrics/functional.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def measure(method: str, case: Case, args: argparse.Namespace, results: Any) -> None:
    """Child process: build the inputs, warm up, then time the method and record its own peak memory."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
        if method == "faiss":
            import faiss

            faiss.omp_set_num_threads(args.threads)
        sys.path.insert(0, str(REPO))  # ctiir from this checkout, without installing it
        engine = ENGINES[method]
        extra = {"module": _module_at(args.before)} if method == "ctiir-before" else {}
        queries, gallery, target = (x.to(args.device) for x in make_data(case, args.dim))
        if method.startswith("gemm"):  # the floor multiplies unit vectors it did not have to make
            gallery = torch.nn.functional.normalize(gallery, dim=1)
        engine(queries[:8], gallery[:64], target[:8] % 64, args, **extra)  # warm-up: imports, kernels
        cuda = args.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            if not _reset_peak_rss():
                raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): Linux only")
            base_kb = _status_kb("VmRSS") or 0
        clock = time.process_time if args.threads == 1 and not cuda else time.perf_counter
        times, hits, spent = [], None, 0.0
        while len(times) < args.repeat and (not times or spent < args.min_time):
            start = clock()
            hits = engine(queries, gallery, target, args, **extra)
            if cuda:
                torch.cuda.synchronize()
            times.append(clock() - start)
            spent += times[-1]
        if cuda:
            peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak_mb = max(0, (_status_kb("VmHWM") or 0) - base_kb) / 1024
        out: dict[str, Any] = {"seconds": min(times), "runs": len(times), "peak_mb": peak_mb, "hits": hits}
        if method == "full-argsort" and case.data == "ties":
            out["plain_hits"] = run_plain_argsort(queries, gallery, target)
        if method == "torchmetrics":
            scores = (torch.nn.functional.normalize(queries, dim=1) * torch.nn.functional.normalize(gallery[target], dim=1)).sum(1)
            out["nonpositive"] = int((scores <= 0).sum())  # torchmetrics never counts such a target as found
        results.put(out)
    except Exception as err:  # noqa: BLE001 - reported in the table, the other methods still run
        results.put({"error": f"{type(err).__name__}: {err}"})


def run_one(method: str, case: Case, args: argparse.Namespace) -> dict[str, Any]:
    if method == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            return {"skipped": "faiss not installed (pip install faiss-cpu)"}
    gb = needed_gb(method, case, args.dim, args.chunk_size)
    if gb > args.max_gb:
        return {"skipped": f"skipped (needs ~{gb:.0f} GiB > --max-gb {args.max_gb:g})"}
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=measure, args=(method, case, args, results))
    proc.start()
    try:
        result = results.get(timeout=args.timeout)
    except queue_module.Empty:  # the child hung or died (out of memory, say)
        result = {"error": f"no result within {args.timeout:g} s (exit code {proc.exitcode})"}
    proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()
    return result


def profile_child(method: str, case: Case, args: argparse.Namespace, results: Any) -> None:
    """Child process: one profiled run of a ctiir variant; the operators' own CPU times, largest first."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        torch.set_num_threads(args.threads)
        sys.path.insert(0, str(REPO))
        extra = {"module": _module_at(args.before)} if method == "ctiir-before" else {}
        queries, gallery, target = make_data(case, args.dim)
        run_ctiir(queries[:8], gallery[:64], target[:8] % 64, args, **extra)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_ctiir(queries, gallery, target, args, **extra)
        rows = sorted(((e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()), key=lambda r: -r[1])
        results.put({"rows": rows})
    except Exception as err:  # noqa: BLE001 - reported instead of the profile
        results.put({"error": f"{type(err).__name__}: {err}"})


def print_profile(method: str, case: Case, args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=profile_child, args=(method, case, args, results))
    proc.start()
    result = results.get(timeout=args.timeout)
    proc.join(timeout=30)
    label = LABELS[method].format(before=args.before)
    if "error" in result:
        print(f"{label}, {case.label}: {result['error']}\n")
        return
    total = sum(seconds for _, seconds in result["rows"])
    print(f"{label}, {case.label} {case.data}, one run, {total:.2f} CPU s in operators:\n")
    print("| operator | self CPU (s) | share |\n|---|---|---|")
    for name, seconds in result["rows"][:8]:
        print(f"| `{name}` | {seconds:.3f} | {100 * seconds / total:.1f}% |")
    print()


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        q, _, g = part.strip().lower().partition("x")
        if not q.isdigit() or not g.isdigit() or int(q) < 1 or int(g) < 1:
            raise SystemExit(f"--sizes: {part!r} is not QxG with positive counts (e.g. 10000x50000)")
        sizes.append((int(q), int(g)))
    return sizes


# ---------------------------------------------------------------------------------------------- table
def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = "MKL" if torch.backends.mkl.is_available() else "BLAS"
    return f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__} ({blas})"


def _same(hits: dict[int, int], reference: dict[int, int] | None) -> str:
    if reference is None:
        return "?"
    wrong = [f"R@{k}: {hits[k]} vs {reference[k]} hits" for k in KS if hits[k] != reference[k]]
    return "yes" if not wrong else "**no** (" + "; ".join(wrong) + ")"


def run_rounds(methods: list[str], case: Case, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every method of a case, ``--rounds`` times in turn; per method the fastest time and highest peak."""
    best: dict[str, dict[str, Any]] = {}
    for round_ in range(args.rounds):
        for method in methods:
            print(f"round {round_ + 1}: {case.label} {case.data} {method} ...", file=sys.stderr, flush=True)
            result = run_one(method, case, args)
            seen = best.get(method)
            if seen is None or "seconds" not in seen:
                best[method] = result
            elif "seconds" in result:
                if result["hits"] != seen["hits"]:
                    raise SystemExit(f"{method} gave different hits in two rounds: {seen['hits']} and {result['hits']}")
                seen["runs"] += result["runs"]
                seen["peak_mb"] = max(seen["peak_mb"], result["peak_mb"])
                seen["seconds"] = min(seen["seconds"], result["seconds"])
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the two small sizes (2k x 10k with and without ties, 4k x 50k)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per method (1: times are CPU seconds)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries per product, for ctiir and the floor")
    parser.add_argument("--max-gb", type=float, default=8.0, help="skip methods that would need more memory than this")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a subset of {','.join(METHODS)}")
    parser.add_argument("--sizes", help="instead of the standard cases: comma-separated QxG on random data, e.g. 10000x50000")
    parser.add_argument("--profile", action="store_true", help="instead of the table: where ctiir (and --before) spend their time")
    parser.add_argument("--before", metavar="REV", help="also time ctiir's functional.py at this git revision")
    parser.add_argument("--repeat", type=int, default=5, help="at most this many timed runs (the fastest counts) ...")
    parser.add_argument("--min-time", type=float, default=3.0, help="... stopping once this many seconds are spent")
    parser.add_argument("--rounds", type=int, default=1, help="run every method of a case this many times, in turn, "
                        "and keep each one's fastest: ratios then survive a load that drifts over minutes")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per (case, method)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeat < 1:
        raise SystemExit("--rounds and --repeat must be at least 1")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    if args.before is None:
        methods = [m for m in methods if m != "ctiir-before"]
    else:
        try:
            _module_at(args.before)
        except (subprocess.CalledProcessError, SyntaxError) as err:
            raise SystemExit(f"--before {args.before}: cannot load ctiir/metrics/functional.py there ({err})") from err
    if "gemm" in methods:  # the floor first, ctiir second: the others are compared with them
        methods.remove("gemm")
        methods.insert(0, "gemm")
    if "ctiir" in methods:
        methods.remove("ctiir")
        methods.insert(1 if "gemm" in methods else 0, "ctiir")

    cases = QUICK if args.quick else FULL
    if args.sizes:
        cases = tuple(Case(q, g, "random") for q, g in parse_sizes(args.sizes))
    if args.profile:
        for case in cases:
            for method in [m for m in ("ctiir", "ctiir-before") if m in methods]:
                print_profile(method, case, args)
        return

    clock = "CPU seconds, 1 thread" if args.threads == 1 and args.device == "cpu" else f"wall seconds, {args.threads} threads"
    print(f"Recall@K (K = {', '.join(map(str, KS))}), D = {args.dim}, {args.device}: {_machine()}; "
          f"chunk {args.chunk_size}; time = fastest of up to {args.repeat} runs per process, "
          f"{args.rounds} process(es) per method taking turns ({clock}).\n")
    header = ["Q x G", "data", "method", "time (s)", "x GEMM", "peak RSS above inputs (MiB)", *(f"R@{k}" for k in KS), "same as ctiir", "note"]
    if args.device == "cuda":
        header[5] = "peak CUDA memory above inputs (MiB)"
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for case in cases:
        floor = reference = None
        for method, result in run_rounds(methods, case, args).items():
            label = LABELS[method].format(before=args.before)
            cells = [case.label, case.data, label]
            if "seconds" not in result:
                cells += ["-", "-", "-", *("-" for _ in KS), "-", result.get("skipped") or result.get("error", "")]
                print("| " + " | ".join(cells) + " |", flush=True)
                continue
            seconds, hits = result["seconds"], result["hits"]
            if method == "gemm":
                floor = seconds
            if method == "ctiir":
                reference = hits
            ratio = f"{seconds / floor:.2f}" if floor else "-"
            notes = [f"{result['runs']} runs" if result["runs"] > 1 else "1 run"]
            if "plain_hits" in result:
                notes.append(f"without the tie rule: {', '.join(f'R@{k} {100 * v / case.num_queries:.2f}' for k, v in result['plain_hits'].items())}")
            if result.get("nonpositive"):
                notes.append(f"{result['nonpositive']} targets score <= 0, never found by torchmetrics")
            recall = ["-" for _ in KS] if hits is None else [f"{100 * hits[k] / case.num_queries:.2f}" for k in KS]
            same = "-" if hits is None or method == "ctiir" else _same(hits, reference)
            cells += [f"{seconds:.3f}", ratio, f"{result['peak_mb']:.0f}", *recall, same, "; ".join(notes)]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
