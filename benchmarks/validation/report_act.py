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
    by = {name: [float(r["asr_content"]) for r in rows if r["set"] == name] for name in SETS}
    lines = ["## Does acting on the scores help? (issue #26)", "",
             "Pre-registered in `results/validation/preregistration_act.md`: 300 scored pool "
             "samples, fine-tuned whole, without the top 20% by v2's SQSD-anchor ranking, and without a "
             "random 20%; three seeds each; content-judge ASR.", ""]
    table = [[name, len(asr), (_fmt(mean(asr)) + (f" ± {_fmt(stdev(asr))}" if len(asr) > 1 else "")) if asr else "—"]
             for name, asr in by.items()]
    lines += _table(["set", "fine-tunes", "ASR content"], table) + [""]
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
