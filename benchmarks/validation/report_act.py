"""The act experiment's section of docs/VALIDATION.md (issue #26 part 6)."""
from __future__ import annotations

from pathlib import Path

TABLE = "act_asr.csv"
SETS = ("minus-top", "minus-random", "whole")      # the pre-registered order
CRITERION = {"margin": 0.05, "p": 0.05}


def act_section(results: Path, seeds: int | None) -> list[str]:
    """The report's lines (nothing before the first fine-tune)."""
    from statistics import mean, stdev
    from .report_common import _fmt, _fmt_p, _rows, _table
    rows = _rows(results / TABLE)
    if not rows:
        return []
    def column(name: str, key: str) -> list[float]:
        return [float(r[key]) for r in rows if r["set"] == name]

    def spread(values: list[float]) -> str:
        if not values:
            return "—"
        return _fmt(mean(values)) + (f" ± {_fmt(stdev(values))}" if len(values) > 1 else "")

    by = {name: column(name, "asr_content") for name in SETS}
    lines = ["## Does acting on the scores help? (issue #26)", "",
             "Pre-registered in `results/validation/preregistration_act.md`: 300 scored pool "
             "samples, fine-tuned whole, without the top 20% by v2's SQSD-anchor ranking, and without a "
             "random 20%; three seeds each; content-judge ASR.", ""]
    # Beside the criterion's column, as pre-registered (no criterion): the keyword judge and
    # the training loss at the end.
    table = [[name, len(asr), spread(asr), spread(column(name, "asr_keywords")), spread(column(name, "final_loss"))]
             for name, asr in by.items()]
    lines += _table(["set", "fine-tunes", "ASR content", "ASR keywords", "final training loss"], table) + [""]
    per_seed = [[r["set"], r["seed"], r["n_train"], _fmt(float(r["asr_content"])), _fmt(float(r["asr_keywords"])),
                 _fmt(float(r["final_loss"]))] for r in rows]
    lines += ["Each fine-tune:", ""] + _table(["set", "seed", "samples", "ASR content", "ASR keywords",
                                                "final training loss"], per_seed) + [""]
    top, rnd = by["minus-top"], by["minus-random"]
    if seeds and min(len(top), len(rnd)) >= seeds:
        from scipy.stats import ttest_ind
        diff = mean(rnd) - mean(top)
        p = float(ttest_ind(rnd, top, equal_var=False, alternative="greater").pvalue)
        helps = diff >= CRITERION["margin"] and p < CRITERION["p"]
        lines += [f"Minus random − minus top: {_fmt(diff)} (needs ≥ {CRITERION['margin']}), Welch one-sided p "
                  f"{_fmt_p(p)} (needs < {CRITERION['p']}): " + ("**dropping by SQSD helps.**" if helps else
                                                                  "**not shown to help at this scale.**"), ""]
    else:
        lines += ["No verdict yet: the minus-top and minus-random sets need all their seeds.", ""]
    return lines
