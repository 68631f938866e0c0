"""Does the SQSD ranking predict safety loss? The paper's S1..S5 experiment in miniature.

    python -m benchmarks.validation v1            # the full run on SmolLM2-135M-Instruct (hours, CPU)
    python -m benchmarks.validation v1 --smoke    # the same stages on a tiny toy model (minutes)
    python -m benchmarks.validation v1 --v2       # after v1's stages (cached), v2
    python -m benchmarks.validation report        # = v1 --report-only

Every stage calls the project's own commands (``sqsd-fast train-adapter``, ``evaluate``,
``score``, ``baseline``, ``subsets``) as a user would, in a subprocess, and is cached:
a stage whose output is complete is skipped, an interrupted one continues (``--resume``),
so rerunning the command after a crash or a session's end loses nothing. Models and
adapters go to the work directory (default ``$SQSD_FAST_CACHE/validation``); what is worth
keeping (splits, recipe, the alignment adapter, every generation with its verdict, ASR
tables, drift logs, stage times) goes to ``results/validation/``, from which
``docs/VALIDATION.md`` is regenerated after every stage (``report.py``).

The recipe (``run.FULL``) and the criterion in ``report_v1.py`` were written
before any fine-tune on S1..S5 was run. The fine-tuning recipe is chosen once, by the
calibration ladder, on a random subset only, and frozen in ``recipe.json`` before S1..S5.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .base import align
from .controls import stage_controls
from .finetunes import stage_calibration, stage_finetunes
from .run import DEFAULT_RESULTS, REPO_ROOT, SHARED_DATA, round_run, write_report
from .scores import stage_scores, stage_windows
from .v2 import stage_v2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="the same stages on a tiny random toy model and a few samples")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="models and adapters (default $SQSD_FAST_CACHE/validation, or "
                             "validation-smoke with --smoke)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"what is kept (default {DEFAULT_RESULTS.relative_to(REPO_ROOT)}; "
                             "with --smoke, WORK/results)")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA,
                        help="the shared data directory (AdvBench, Alpaca, Dolly, anchors)")
    parser.add_argument("--report-only", action="store_true",
                        help="regenerate docs/VALIDATION.md from the results and stop")
    parser.add_argument("--v2", action="store_true",
                        help="after v1's stages (cached), run v2 (issue #17: three seeds, 128-token "
                             "answers, the content judge, SQSD with the anchors' direction)")
    args = parser.parse_args(argv)

    run = round_run(args)
    if args.report_only:
        write_report(run)
        return 0
    missing = [n for n in ("advbench_harmful_behaviors_targets.jsonl", "alpaca_5000.json",
                           "dolly_safety_related_387.jsonl", "refusal_anchors_40.jsonl")
               if not (args.data_dir / n).exists()]
    if missing:
        parser.error(f"--data-dir {args.data_dir}: missing {', '.join(missing)} (the shared "
                     f"data; see ../shared/README.md)")
    align(run)
    stage_scores(run)
    stage_windows(run)
    training = stage_calibration(run)
    stage_finetunes(run, training)
    stage_controls(run, training)
    if args.v2:
        stage_v2(run, training)
    write_report(run)
    print("[validation] finished; report in "
          + str(run.results / "VALIDATION.md" if args.smoke else REPO_ROOT / "docs" / "VALIDATION.md"))
    return 0
