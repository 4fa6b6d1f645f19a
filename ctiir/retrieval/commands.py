"""``ctiir index`` and ``ctiir search``: command lines over ``build_index`` and ``Retriever``.

They follow the convention of every ctiir command (``ctiir.cliargs``): jsonargparse options with underscores,
booleans that take a value (``--update=true``, ``--json=true``), ``--config`` YAML, ``--progress_bar``,
``--device``; exit code 0 when done, 1 when the work failed on the data (an unreadable index or image, an
index built by another checkpoint), 2 on a usage error (a bad option or value, a file that must exist and
does not). What is printed besides the results is decided once, by ``ctiir [--verbose]`` (``ctiir.cli``).

Heavy imports (torch, Lightning, the stages) happen when a command runs, so ``--help`` is quick.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctiir.cliargs import (
    EXIT_OK,
    EXIT_PROBLEMS,
    add_device,
    add_progress_bar,
    command_parser,
    resolve_device,
    run_command,
)

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace


def data_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "the work failed on the data" (exit code 1); anything else is a bug."""
    from ctiir.datamodules.errors import DataError
    from ctiir.retrieval.errors import RetrievalError

    return (RetrievalError, DataError, FileNotFoundError, PermissionError)


def fail_on_data(prog: str, work: Callable[[], int]) -> int:
    """Run ``work``; an expected error of the data becomes its message (no traceback) and exit code 1."""
    try:
        return work()
    except data_errors() as err:
        message = str(err).strip().splitlines() or [type(err).__name__]
        print(f"{prog}: {message[0]}", file=sys.stderr)
        for extra in message[1:]:
            print(extra, file=sys.stderr)
        return EXIT_PROBLEMS


def require_file(parser: ArgumentParser, option: str, value: str | None, folder: bool = False) -> None:
    """A file (or folder) that must exist and does not is a usage error (exit code 2), as in every command."""
    if value is None:
        return
    path = Path(value)
    if not (path.is_dir() if folder else path.is_file()):
        what = "folder" if folder else "file"
        parser.error(f"{option}: {value} {'is not a ' + what if path.exists() else 'not found'}")


def device_option(parser: ArgumentParser, value: str) -> Any:
    """``--device``'s value as a ``torch.device``; one that is not there is a usage error."""
    try:
        return resolve_device(value)
    except ValueError as err:
        parser.error(str(err))


def load_datamodule(config: str | Path) -> Any:
    """A datamodule from a YAML file: its ``data:`` block (a LightningCLI config) or the whole file."""
    import yaml
    from lightning.pytorch.cli import instantiate_class

    from ctiir.retrieval.errors import RetrievalError

    path = Path(config)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RetrievalError(f"--dataset: {path} is not valid YAML ({err})") from err
    block = cfg.get("data", cfg) if isinstance(cfg, dict) else None
    if not isinstance(block, dict) or "class_path" not in block:
        raise RetrievalError(f"--dataset: {path} has no data block with a class_path (like ctiir/configs/synthetic.yaml)")
    try:
        return instantiate_class((), block)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise RetrievalError(f"--dataset: {path}: cannot build {block['class_path']}: {err}") from err


# ---------------------------------------------------------------------------------------------- index
def index_parser() -> ArgumentParser:
    p = command_parser("index", "Encode a folder of images (or a dataset's gallery) into a searchable index.")
    p.add_argument("--ckpt", type=str, required=True, help="any ctiir stage checkpoint")
    p.add_argument("--images", type=str | None, default=None, help="a folder of jpg/png/webp images, searched recursively")
    p.add_argument("--dataset", type=str | None, default=None, help="a YAML with a data: block: index its composed test galleries")
    p.add_argument("--task", type=str | None, default=None, help="with --dataset: only this task's gallery (e.g. fashioniq-original/dress)")
    p.add_argument("--out", type=str, required=True, help="the index folder (replaced atomically)")
    p.add_argument("--update", type=bool, default=False, help="--update=true: encode only new or changed images; drop deleted ones")
    p.add_argument("--strict", type=bool, default=False, help="--strict=true: an unreadable image is an error (default: skipped and reported)")
    p.add_argument("--dtype", default=None, choices=["float16", "float32"], help="stored precision (unset: float16; with --update=true, the index's)")
    p.add_argument("--faiss", default=None, choices=["flat", "hnsw", "ivf"], help="also build a FAISS index")
    p.add_argument("--hnsw_m", type=int, default=32, help="FAISS hnsw: graph degree")
    p.add_argument("--ef_construction", type=int, default=80, help="FAISS hnsw: build-time search width")
    p.add_argument("--ef_search", type=int, default=128, help="FAISS hnsw: query-time search width")
    p.add_argument("--nlist", type=int | None, default=None, help="FAISS ivf: clusters (default 4·√N, at most N/39)")
    p.add_argument("--nprobe", type=int, default=16, help="FAISS ivf: clusters scanned per query")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=0, help="image-decoding DataLoader workers")
    # The encoding runs through Trainer.predict: these are the Trainer's own options, so it spreads over GPUs
    # and nodes as training does (a plain --device would give that up).
    p.add_argument("--accelerator", type=str, default="auto", help="the encoding Trainer's accelerator: auto, cpu, gpu, ...")
    p.add_argument("--devices", type=int | str, default=1, help="the encoding Trainer's devices")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--strategy", type=str, default="auto", help="e.g. ddp with --devices 4")
    p.add_argument("--precision", type=str | None, default=None, help="e.g. bf16-mixed on a GPU")
    add_progress_bar(p, "a progress bar while images are encoded")
    return p


def index_main(argv: list[str] | None = None) -> int:
    """``ctiir index``: 0 when the index is written, 1 when the data refuses (exit 2 on usage)."""
    parser = index_parser()

    def index(args: Namespace) -> int:
        if (args.images is None) == (args.dataset is None):
            parser.error("give exactly one of --images DIR and --dataset CONFIG")
        require_file(parser, "--ckpt", args.ckpt)
        require_file(parser, "--images", args.images, folder=True)
        require_file(parser, "--dataset", args.dataset)
        for option in ("batch_size", "hnsw_m", "ef_construction", "ef_search", "nprobe", "num_nodes"):
            if getattr(args, option) < 1:
                parser.error(f"--{option} must be >= 1, got {getattr(args, option)}")
        return fail_on_data(parser.prog, lambda: build(args))

    return run_command(parser, argv, index)


def build(args: Namespace) -> int:
    from ctiir.retrieval.ann import FaissOptions
    from ctiir.retrieval.indexer import build_index

    faiss = None
    if args.faiss:
        faiss = FaissOptions(
            backend=args.faiss, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
            ef_search=args.ef_search, nlist=args.nlist, nprobe=args.nprobe,
        )
    # args["update"], not args.update: "update" is also a method of jsonargparse's Namespace (always truthy), so
    # jsonargparse stores the option under another attribute name; indexing by key reads the option itself.
    trainer_kwargs: dict[str, Any] = {
        "accelerator": args.accelerator, "devices": args.devices, "num_nodes": args.num_nodes, "strategy": args.strategy,
    }
    if args.precision:
        trainer_kwargs["precision"] = args.precision
    data = load_datamodule(args.dataset) if args.dataset else None
    report = build_index(
        args.ckpt, args.out, images=args.images, data=data, task=args.task, update=args["update"],
        strict=args.strict, dtype=args.dtype, faiss=faiss, batch_size=args.batch_size,
        num_workers=args.num_workers, trainer_kwargs=trainer_kwargs, progress=args.progress_bar,
    )
    if report is None:
        return EXIT_OK  # another rank of a distributed run
    # Each skipped image was already reported by path (a warning of build_index); this line counts them.
    line = f"index {report.folder}: {report.count} images ({report.encoded} encoded; {report.plan.summary()})"
    if report.skipped:
        line += f"; {len(report.skipped)} unreadable images skipped (--strict=true makes them an error)"
    print(line)
    if report.faiss:
        f = report.faiss
        print(
            f"FAISS {f['backend']}: built in {f['build_seconds']:.1f} s, recall@10 {f['recall_at_10']:.4f} "
            f"vs exact on {f['recall_sample']} gallery vectors"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- search
def search_parser() -> ArgumentParser:
    p = command_parser("search", "Search an index with an image, a text, or both (a composed query).")
    p.add_argument("--ckpt", type=str, required=True, help="the checkpoint that built the index")
    p.add_argument("--index", type=str, required=True, help="an index folder written by `ctiir index`")
    p.add_argument("--image", type=str | None, default=None, help="the reference image")
    p.add_argument("--text", type=str | None, default=None, help='the modification, e.g. "is red with long sleeves"')
    p.add_argument("-k", "--k", type=int, default=10, help="how many results (at most the gallery size: a larger k shows them all)")
    p.add_argument("--json", type=bool, default=False, help="--json=true: print JSON instead of a table")
    p.add_argument("--out", type=str | None, default=None, help="write a picture of the results (PNG)")
    p.add_argument("--target", type=str | None, default=None, help="a gallery id: frame it in green, or say it is not in the top k")
    p.add_argument("--backend", default="exact", choices=["exact", "faiss"], help="exact (chunked matmul) or the index's FAISS index")
    add_device(p)
    return p


def save_png_atomic(image: Any, path: Path) -> None:
    from ctiir.io import atomic_open

    with atomic_open(path, "wb") as handle:
        image.save(handle, format="PNG")


def result_picture(retriever: Any, result: Any, reference: Any, target: str | None) -> Any:
    """The ``--out`` picture: the reference (an RGB image or ``None``), its text and weights, and the ranked gallery images."""
    from ctiir.datamodules.errors import DataError
    from ctiir.datamodules.images import load_rgb
    from ctiir.retrieval.render import Candidate, GridRow, render_grid

    candidates = []
    for rank, (gid, score, row) in enumerate(zip(result.ids, result.scores, result.rows, strict=True), start=1):
        try:
            picture = load_rgb(retriever.index.image_path(row))
        except DataError:
            picture = None  # drawn as a placeholder: the gallery file moved since indexing
        candidates.append(Candidate(gid, score, rank, picture))
    return render_grid([GridRow(reference, result.text, candidates, result.weights, target)])


def search_main(argv: list[str] | None = None) -> int:
    """``ctiir search``: 0 with the results, 1 when the index, the checkpoint or the image refuses (2 on usage)."""
    parser = search_parser()

    def search(args: Namespace) -> int:
        if args.image is None and not (args.text or "").strip():
            parser.error("give --image, --text, or both")
        if args.k < 1:
            parser.error(f"-k must be >= 1, got {args.k}")
        require_file(parser, "--ckpt", args.ckpt)
        require_file(parser, "--index", args.index, folder=True)
        require_file(parser, "--image", args.image)
        device = device_option(parser, args.device)
        return fail_on_data(parser.prog, lambda: run_search(parser, args, device))

    return run_command(parser, argv, search)


def run_search(parser: ArgumentParser, args: Namespace, device: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from ctiir.retrieval.retriever import Retriever, open_image

    retriever = Retriever.from_checkpoint(args.ckpt, args.index, device=device, backend=args.backend)
    if args.target is not None:
        try:
            retriever.index.position(args.target)
        except KeyError:
            parser.error(f"--target {args.target!r} is not an id of the index {args.index}")
    k = min(args.k, len(retriever.index))
    if k < args.k:
        print(f"(the index holds {k} images: -k {args.k} shows all of them)", file=sys.stderr)
    reference = open_image(args.image) if args.image is not None else None  # decoded once: searched and drawn
    result = retriever.search(image=reference, text=args.text, k=k)
    target_rank = result.rank_of(args.target) if args.target is not None else None
    if args.out:
        save_png_atomic(result_picture(retriever, result, reference, args.target), Path(args.out))
    if args.json:
        payload = result.to_dict()
        payload["image"] = args.image
        if args.target is not None:
            payload["target"] = {"id": args.target, "rank": target_rank}
        print(json.dumps(payload, indent=1))
        return EXIT_OK
    console = Console()
    console.print(_title(args.image, args.text, result.weights), highlight=False)
    table = Table()
    for column, justify in (("rank", "right"), ("score", "right"), ("id", "left")):
        table.add_column(column, justify=justify)
    for rank, (gid, score) in enumerate(zip(result.ids, result.scores, strict=True), start=1):
        style = "bold green" if gid == args.target else None
        table.add_row(str(rank), f"{score:.4f}", gid, style=style)
    console.print(table)
    if args.target is not None:
        console.print(
            f"target {args.target}: rank {target_rank}" if target_rank else f"target {args.target} is not in the top {k}",
            style="green" if target_rank else "red", highlight=False,
        )
    if args.out:
        console.print(f"wrote {args.out}", highlight=False)
    return EXIT_OK


def _title(image: str | None, text: str | None, weights: tuple[float, float] | None) -> str:
    parts = []
    if image:
        parts.append(f"image {image}")
    if text:
        parts.append(f'text "{text}"')
    title = " + ".join(parts)
    if weights is not None:
        title += f"  (w_img {weights[0]:.2f}, w_txt {weights[1]:.2f})"
    return title
