"""``ctiir index`` and ``ctiir search``: command lines over ``build_index`` and ``Retriever``.

Each command is ``main(argv) -> int``: 0 on success, 1 on an error (one line naming the file or value, no
traceback), 2 on a usage error. Flags follow the LightningCLI style (``--ckpt``, ``--batch_size``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, ArgumentError, ArgumentParser, Namespace

from ctiir.datamodules.errors import DataError
from ctiir.retrieval.errors import RetrievalError

EXPECTED_ERRORS = (RetrievalError, DataError, FileNotFoundError, PermissionError)


def new_parser(prog: str, description: str) -> ArgumentParser:
    return ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)


def parse(parser: ArgumentParser, argv: list[str] | None) -> Namespace | int:
    """The parsed arguments, or an exit code: 0 after ``--help``, 2 (with one line) on a usage error."""
    try:
        return parser.parse_args(sys.argv[1:] if argv is None else argv)
    except ArgumentError as err:
        print(f"{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help
        return int(done.code or 0)


@contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """Keep library chatter (Lightning's banners, open_clip's weight notices) off the terminal unless --verbose."""
    if verbose:
        logging.basicConfig(level=logging.INFO)
        yield
        return
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_previous = lightning_logger.level
    lightning_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(previous)
        lightning_logger.setLevel(lightning_previous)


def run(prog: str, body: Callable[[], int]) -> int:
    """Run a command body, turning the expected errors into one line and exit code 1."""
    try:
        return body()
    except EXPECTED_ERRORS as err:
        message = str(err).strip().splitlines()
        print(f"{prog}: {message[0] if message else type(err).__name__}", file=sys.stderr)
        for extra in message[1:]:
            print(extra, file=sys.stderr)
        return 1


def load_datamodule(config: str | Path) -> Any:
    """A datamodule from a YAML file: its ``data:`` block (a LightningCLI config) or the whole file."""
    import yaml
    from lightning.pytorch.cli import instantiate_class

    path = Path(config)
    if not path.is_file():
        raise RetrievalError(f"--dataset: {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RetrievalError(f"--dataset: {path} is not valid YAML ({err})") from err
    block = cfg.get("data", cfg) if isinstance(cfg, dict) else None
    if not isinstance(block, dict) or "class_path" not in block:
        raise RetrievalError(f"--dataset: {path} has no data block with a class_path (like examples/configs/synthetic.yaml)")
    try:
        return instantiate_class((), block)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise RetrievalError(f"--dataset: {path}: cannot build {block['class_path']}: {err}") from err


# ---------------------------------------------------------------------------------------------- index
def index_parser() -> ArgumentParser:
    p = new_parser("ctiir index", "Encode a folder of images (or a dataset's gallery) into a searchable index.")
    p.add_argument("--ckpt", type=str, required=True, help="any ctiir stage checkpoint")
    p.add_argument("--images", type=str | None, default=None, help="a folder of jpg/png/webp images, searched recursively")
    p.add_argument("--dataset", type=str | None, default=None, help="a YAML with a data: block: index its composed test galleries")
    p.add_argument("--task", type=str | None, default=None, help="with --dataset: only this task's gallery (e.g. fashioniq-original/dress)")
    p.add_argument("--out", type=str, required=True, help="the index folder (replaced atomically)")
    p.add_argument("--update", dest="incremental", action=ActionYesNo, default=False, help="encode only new or changed images; drop deleted ones")
    p.add_argument("--strict", action=ActionYesNo, default=False, help="an unreadable image is an error (default: skipped and reported)")
    p.add_argument("--dtype", type=str | None, default=None, choices=[None, "float16", "float32"], help="stored precision (default float16)")
    p.add_argument("--faiss", type=str | None, default=None, choices=[None, "flat", "hnsw", "ivf"], help="also build a FAISS index")
    p.add_argument("--hnsw_m", type=int, default=32)
    p.add_argument("--ef_construction", type=int, default=80)
    p.add_argument("--ef_search", type=int, default=128)
    p.add_argument("--nlist", type=int | None, default=None)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--accelerator", type=str, default="auto")
    p.add_argument("--devices", type=int | str, default=1)
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--strategy", type=str, default="auto")
    p.add_argument("--precision", type=str | None, default=None, help="e.g. bf16-mixed on a GPU")
    p.add_argument("--verbose", action=ActionYesNo, default=False)
    return p


def index_main(argv: list[str] | None = None) -> int:
    parser = index_parser()
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    if (args.images is None) == (args.dataset is None):
        print("ctiir index: error: give exactly one of --images DIR and --dataset CONFIG", file=sys.stderr)
        return 2

    def body() -> int:
        from rich.console import Console

        from ctiir.retrieval.ann import FaissOptions
        from ctiir.retrieval.indexer import build_index

        console = Console(stderr=True)
        faiss = None
        if args.faiss:
            faiss = FaissOptions(
                backend=args.faiss, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                ef_search=args.ef_search, nlist=args.nlist, nprobe=args.nprobe,
            )
        trainer_kwargs: dict[str, Any] = {
            "accelerator": args.accelerator, "devices": args.devices, "num_nodes": args.num_nodes, "strategy": args.strategy,
        }
        if args.precision:
            trainer_kwargs["precision"] = args.precision
        with quiet(args.verbose):
            data = load_datamodule(args.dataset) if args.dataset else None
            report = build_index(
                args.ckpt, args.out, images=args.images, data=data, task=args.task, update=args.incremental,
                strict=args.strict, dtype=args.dtype, faiss=faiss, batch_size=args.batch_size,
                num_workers=args.num_workers, trainer_kwargs=trainer_kwargs,
            )
        if report is None:
            return 0  # another rank of a distributed run
        for error in report.skipped.values():
            console.print(f"[yellow]skipped:[/] {error}", markup=True, highlight=False)
        line = f"index {report.folder}: {report.count} images ({report.encoded} encoded; {report.plan.summary()})"
        if report.skipped:
            line += f"; {len(report.skipped)} unreadable images skipped (--strict makes them an error)"
        print(line)
        if report.faiss:
            f = report.faiss
            print(f"FAISS {f['backend']}: built in {f['build_seconds']:.1f} s, recall@10 {f['recall_at_10']:.4f} vs exact on {f['recall_sample']} gallery vectors")
        return 0

    return run("ctiir index", body)


# ---------------------------------------------------------------------------------------------- search
def search_parser() -> ArgumentParser:
    p = new_parser("ctiir search", "Search an index with an image, a text, or both (a composed query).")
    p.add_argument("--ckpt", type=str, required=True, help="the checkpoint that built the index")
    p.add_argument("--index", type=str, required=True, help="an index folder written by `ctiir index`")
    p.add_argument("--image", type=str | None, default=None, help="the reference image")
    p.add_argument("--text", type=str | None, default=None, help='the modification, e.g. "is red with long sleeves"')
    p.add_argument("-k", "--k", type=int, default=10, help="how many results")
    p.add_argument("--json", action=ActionYesNo, default=False, help="print JSON instead of a table")
    p.add_argument("--out", type=str | None, default=None, help="write a picture of the results (PNG)")
    p.add_argument("--target", type=str | None, default=None, help="a gallery id: frame it in green, or say it is not in the top k")
    p.add_argument("--backend", type=str, default="exact", choices=["exact", "faiss"])
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--verbose", action=ActionYesNo, default=False)
    return p


def save_png_atomic(image: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def result_picture(retriever: Any, result: Any, image: Any, target: str | None) -> Any:
    """The ``--out`` picture: the reference, its text and weights, and the ranked gallery images."""
    from ctiir.datamodules.images import load_rgb
    from ctiir.retrieval.render import Candidate, GridRow, render_grid
    from ctiir.retrieval.retriever import open_image

    candidates = []
    for rank, (gid, score, row) in enumerate(zip(result.ids, result.scores, result.rows, strict=True), start=1):
        try:
            picture = load_rgb(retriever.index.image_path(row))
        except DataError:
            picture = None  # drawn as a placeholder: the gallery file moved since indexing
        candidates.append(Candidate(gid, score, rank, picture))
    reference = open_image(image) if image is not None else None
    return render_grid([GridRow(reference, result.text, candidates, result.weights, target)])


def search_main(argv: list[str] | None = None) -> int:
    parser = search_parser()
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.image is None and not (args.text or "").strip():
        print("ctiir search: error: give --image, --text, or both", file=sys.stderr)
        return 2
    if args.k < 1:
        print(f"ctiir search: error: -k must be >= 1, got {args.k}", file=sys.stderr)
        return 2

    def body() -> int:
        from rich.console import Console
        from rich.table import Table

        from ctiir.retrieval.retriever import Retriever

        with quiet(args.verbose):
            retriever = Retriever.from_checkpoint(args.ckpt, args.index, device=args.device, backend=args.backend)
            if args.target is not None and args.target not in retriever.index.ids:
                raise RetrievalError(f"--target {args.target!r} is not an id of the index {args.index}")
            k = min(args.k, len(retriever.index))
            result = retriever.search(image=args.image, text=args.text, k=k)
        target_rank = result.rank_of(args.target) if args.target is not None else None
        if args.out:
            save_png_atomic(result_picture(retriever, result, args.image, args.target), Path(args.out))
        if args.json:
            payload = result.to_dict()
            payload["image"] = args.image
            if args.target is not None:
                payload["target"] = {"id": args.target, "rank": target_rank}
            print(json.dumps(payload, indent=1))
            return 0
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
        return 0

    return run("ctiir search", body)


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
