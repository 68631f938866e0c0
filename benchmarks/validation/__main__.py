"""python -m benchmarks.validation ROUND [options]: one round of the validation experiment.

Run from the repository root. Every stage is cached; a rerun continues where the last stopped.

    python -m benchmarks.validation v1             # S1..S5 and the controls on SmolLM2 (hours, CPU)
    python -m benchmarks.validation v1 --v2        # ... then v2 (three seeds, the content judge)
    python -m benchmarks.validation v3             # v3, after v1/v2 (about 11 h on 2 CPU cores)
    python -m benchmarks.validation act            # acting on the scores, after v3 (hours, CPU)
    python -m benchmarks.validation rejudge        # v1's answers under the content judge
    python -m benchmarks.validation report         # docs/VALIDATION.md from results/validation/

v1, v3 and act take --smoke (the same stages on a toy model, in minutes), --work-dir,
--results-dir and --data-dir; ``ROUND --help`` lists each round's options. ``report`` is
``v1 --report-only``.
"""
from __future__ import annotations

import sys
from importlib import import_module

ROUNDS = ("v1", "v3", "act", "rejudge", "report")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ROUNDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    sys.argv[0] = f"python -m benchmarks.validation {name}"      # argparse's program name
    if name == "report":
        return import_module(".v1", __package__).main(["--report-only", *rest])
    return import_module(f".{name}", __package__).main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
