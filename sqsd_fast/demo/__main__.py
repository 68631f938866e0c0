"""`python -m sqsd_fast.demo` (what `make demo` runs): a thin front over the two demos.

By default the real demo (``sqsd_fast.demo.real``): SmolLM2-135M-Instruct fetched and
converted once (cached), the demo records scored with no configuration (a fresh LoRA state
and the shipped anchor sets, built once and cached), subsets cut, the ranking printed.
``--toy`` runs the offline toy demo instead (``sqsd_fast.demo.toy``: random weights,
seconds), which is also what runs when the model cannot be fetched.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sqsd_fast.demo.real import run_real_demo
from sqsd_fast.demo.toy import run

PROG = "python -m sqsd_fast.demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run SQSD end to end: by default on the real SmolLM2-135M-Instruct "
                    "(first run a few minutes on a CPU: a ~93 MB download, a conversion and "
                    "the anchor directions, all cached; later runs under a minute). "
                    "--toy: a random-weight toy model, offline, seconds.")
    parser.add_argument("--out-dir", default="demo_output",
                        help="where the data, scores and subsets go (default: demo_output)")
    parser.add_argument("--toy", action="store_true",
                        help="run the toy demo (random weights, offline) instead of SmolLM2")
    parser.add_argument("--model-dir", default=None,
                        help="use this Hugging Face model directory instead of fetching "
                             "SmolLM2 (real demo only)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache root for the model, the state and the anchor directions (default: "
                             "$SQSD_FAST_CACHE, else ~/.cache/sqsd_fast)")
    bars = parser.add_mutually_exclusive_group()
    bars.add_argument("--progress", action="store_true",
                      help="show progress bars (default: on for the real demo, off for --toy)")
    bars.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.toy:
        if args.model_dir:
            print(f"{PROG}: error: --model-dir is for the real demo; drop it or --toy",
                  file=sys.stderr)
            return 2
        return run(out_dir, quiet_progress=not args.progress)
    try:
        return run_real_demo(out_dir, model_dir=args.model_dir, cache_dir=args.cache_dir,
                             progress=not args.no_progress)
    except KeyboardInterrupt:
        # Caches are written by atomic renames: what finished (model, directions) is kept.
        print(f"\n{PROG}: interrupted; the downloaded model and the directions built so far "
              f"stay cached, so running it again continues from there", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:   # user-facing: a bad path, a full disk, ...
        if os.environ.get("SQSD_FAST_DEBUG"):
            raise
        print(f"{PROG}: error: {' '.join(str(exc).split())} (set SQSD_FAST_DEBUG=1 for a "
              f"traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
