"""Prediction entry points that need a trained checkpoint: ``ctiir cirr-submission``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctiir.checkpoints import CheckpointError
from ctiir.stages import ComposedRetrieval


def cirr_submission_main(argv: list[str] | None = None) -> int:
    from ctiir.datamodules.cirr import CIRRDataModule
    from ctiir.datamodules.errors import DataError
    from ctiir.submission import SubmissionError, predict_cirr_submission

    parser = argparse.ArgumentParser(prog="ctiir cirr-submission", description="Write CIRR test-server submission files.")
    parser.add_argument("--ckpt", required=True, help="a Stage III checkpoint (ComposedRetrieval)")
    parser.add_argument("--root", required=True, help="CIRR root with captions/ and image_splits/")
    parser.add_argument("--image-root", default=None, help="where the split files' relative image paths start (default: root)")
    parser.add_argument("--out", required=True, help="output folder (existing files are never overwritten)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if not Path(args.ckpt).is_file():
        parser.error(f"--ckpt: {args.ckpt} not found")
    try:
        module = ComposedRetrieval.load_from_checkpoint(args.ckpt, map_location="cpu")
    except CheckpointError as err:
        print(f"ctiir cirr-submission: {err}", file=sys.stderr)
        return 1
    module.eval()
    recorded = module.preprocessing  # the datamodule asks for what the checkpoint records: no mismatch warning
    preprocess = {"preprocess": recorded.mode, "target_pad_ratio": recorded.target_pad_ratio or 1.25} if recorded else {}
    data = CIRRDataModule(root=args.root, image_root=args.image_root, batch_size=args.batch_size, **preprocess)
    try:
        recall, subset = predict_cirr_submission(module, data, args.out)
    except (SubmissionError, DataError) as err:
        print(f"ctiir cirr-submission: {err}", file=sys.stderr)
        return 1
    print(f"wrote {recall} and {subset}")
    return 0
