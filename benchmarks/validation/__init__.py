"""The validation experiment: does the SQSD ranking predict safety loss? (docs/VALIDATION.md)

One experiment in rounds, run from the repository root as ``python -m benchmarks.validation
ROUND`` (``__main__.py`` lists them). Every stage calls the project's own ``sqsd-fast``
commands in a subprocess and is cached, so a rerun continues where the last one stopped.
Models and adapters go to the work directory (default ``$SQSD_FAST_CACHE/validation``);
what is kept goes to ``results/validation/``, from which ``docs/VALIDATION.md`` is
regenerated after every stage.

    run.py          Recipe, Run (cached stages), the sqsd-fast subprocess, CSV/JSONL files
    base.py         model, splits, alignment and its check; train and evaluate
    scores.py       directions, scores of the pool, windows
    finetunes.py    calibration ladder, v1's window fine-tunes
    controls.py     v1's length and gradient-matching controls
    v1.py           v1's command (S1..S5, controls; --v2 adds v2)
    v2.py           v2: three seeds, 128-token answers, the content judge, SQSD-anchor
    v3.py           v3: where the danger direction comes from
    act.py          does acting on the scores help?
    rejudge.py      v1's answers under the content judge (post hoc)
    report*.py      docs/VALIDATION.md: report.py assembles the sections of report_v1,
                    report_v2, report_v3 and report_act (report_common: shared helpers)
"""
