"""Prediction entry points that need a trained checkpoint: ``ctiir cirr-submission``.

Heavy imports (torch, the stages) happen when the command runs, so ``ctiir cirr-submission --help`` is quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctiir.cliargs import EXIT_PROBLEMS, add_device, add_progress_bar, command_parser, resolve_device, run_command


def cirr_submission_main(argv: list[str] | None = None) -> int:
    """``ctiir cirr-submission``: 0 when both files are written, 1 when the data or the files refuse, 2 on usage."""
    parser = command_parser("cirr-submission", "Write CIRR test-server submission files from a Stage III checkpoint.")
    parser.add_argument("--ckpt", type=str, required=True, help="a Stage III checkpoint (ComposedRetrieval)")
    parser.add_argument("--root", type=str, required=True, help="CIRR root with captions/ and image_splits/")
    parser.add_argument(
        "--image_root", type=str | None, default=None, help="where the split files' relative image paths start (default: root)"
    )
    parser.add_argument("--out", type=str, required=True, help="output folder (existing files are never overwritten)")
    parser.add_argument("--name", type=str, default="ctiir", help="the files' name part: recall_submission_<name>.json")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=0, help="image-decoding DataLoader workers")
    add_device(parser)
    add_progress_bar(parser, "a progress bar while the gallery and the queries are encoded")

    def submit(args: Any) -> int:
        if not Path(args.ckpt).is_file():
            parser.error(f"--ckpt: {args.ckpt} not found")
        try:
            device = resolve_device(args.device)
        except ValueError as err:
            parser.error(str(err))
        return write_submission(args, device)

    return run_command(parser, argv, submit)


def write_submission(args: Any, device: Any) -> int:
    import sys

    from ctiir.checkpoints import CheckpointError
    from ctiir.datamodules.cirr import CIRRDataModule
    from ctiir.datamodules.errors import DataError
    from ctiir.stages import ComposedRetrieval
    from ctiir.submission import SubmissionError, predict_cirr_submission

    try:
        module = ComposedRetrieval.load_from_checkpoint(args.ckpt, map_location=device)  # on ``device`` already
    except CheckpointError as err:
        print(f"ctiir cirr-submission: {err}", file=sys.stderr)
        return EXIT_PROBLEMS
    module.eval()
    recorded = module.preprocessing  # the datamodule asks for what the checkpoint records: no mismatch warning
    preprocess = {"preprocess": recorded.mode, "target_pad_ratio": recorded.target_pad_ratio or 1.25} if recorded else {}
    data = CIRRDataModule(
        root=args.root, image_root=args.image_root, batch_size=args.batch_size, num_workers=args.num_workers, **preprocess
    )
    try:
        recall, subset = predict_cirr_submission(module, data, args.out, name=args.name, progress=args.progress_bar)
    except (SubmissionError, DataError) as err:
        print(f"ctiir cirr-submission: {err}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"wrote {recall} and {subset} (encoded on {device})")
    return 0
