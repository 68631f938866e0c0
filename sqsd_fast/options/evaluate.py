"""The options of ``evaluate``: one dataclass that is the CLI parser, the keyword list of
:func:`sqsd_fast.evaluation.evaluate` and the resume fingerprint (the pattern of
``sqsd_fast/options/``: field = ``--option`` = keyword; checked when built)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from sqsd_fast.choices import check_choice, check_positive_int
# The field helpers and the check runner are shared with the other commands' options, so
# every command reports a bad value the same way (OptionError naming the field).
from sqsd_fast.options.groups import DeviceOptions, ModelOptions, ProgressOptions
from sqsd_fast.options.base import OptionError, option, optional_positive, required_option

# "keywords": the GCG / He et al. refusal list; "keywords-extended": the same plus broader
# phrases; "content": refusal / degenerate / on-topic compliance (content_judge.py);
# "model": a guard or classifier model given by --judge-model (judges.py).
JUDGES = ("keywords", "keywords-extended", "content", "model")


def _int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _optional_text(name, value):
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{name} must be a non-empty text when given, got {value!r}")
    return value


@dataclass(kw_only=True)
class EvaluateOptions(ProgressOptions, DeviceOptions, ModelOptions):
    """``sqsd-fast evaluate``: answer harmful (or benign) prompts greedily, judge each
    answer, report the attack success rate (ASR) and the refusal rate."""

    prompts: str = required_option("prompts: .txt (one per line, blank lines skipped, "
                                   "CSV-quoted lines unquoted), .json, .jsonl, .csv, .parquet",
                                   "FILE")
    out: str = required_option("generations, one row per prompt in input order: .jsonl, .csv, "
                               ".parquet", "FILE")
    adapter: Optional[str] = option(None, "peft LoRA adapter directory applied to --model "
                                    "(e.g. the LoRA fine-tuned on a subset)", "DIR")
    prompt_field: Optional[str] = option(None, "field holding the prompt in JSON/JSONL/CSV/"
                                         "Parquet prompts (default: the first of prompt, "
                                         "goal, instruction)", "NAME")
    system_prompt: Optional[str] = option(None, "system turn put before every prompt "
                                          "(default: none)", "TEXT")
    summary: Optional[str] = option(None, "summary JSON (default: <out>.summary.json)",
                                    "FILE")
    judge: Optional[str] = option(None, "keywords (refusal phrases of Zou et al. 2023 / "
                                  "He et al. 2024), keywords-extended (adds 'I can't', "
                                  "'I must', 'never', 'cannot', ...), content (success only "
                                  "for on-topic compliance: refusals, empty, degenerate and "
                                  "off-topic answers are not), or model (needs "
                                  "--judge-model); default: model when --judge-model is "
                                  "given, else keywords. Every answer also gets the content "
                                  "judge's verdict", choices=JUDGES)
    judge_model: Optional[str] = option(None, "guard or classifier model directory: a "
                                        "sequence classifier with an 'unsafe'/'harmful' "
                                        "label, or a causal LM guard answering 'safe'/"
                                        "'unsafe' (e.g. Llama Guard)", "DIR")
    max_new_tokens: int = option(128, "tokens generated per answer at most (long enough for "
                                 "an answer to show whether it has content)", "N")
    batch_size: int = option(8, "prompts per generate call (left padding; greedy "
                             "answers do not depend on it up to float rounding)", "N")
    limit: Optional[int] = option(None, "evaluate only the first N prompts", "N")
    seed: int = option(0, "torch seed set before generating (greedy decoding does not "
                       "draw random numbers; kept for reproducible runs)", "N")
    resume: bool = option(False, "continue an interrupted run from the sidecar files "
                          "beside --out")

    COMMAND: ClassVar[str] = "evaluate"
    DESCRIPTION: ClassVar[str] = (
        "Greedy answers to every prompt of --prompts (batched, left padding, the chat "
        "template), each judged: by default an answer is an attack success when it contains "
        "none of the standard refusal phrases; --judge content counts only on-topic "
        "compliance. Writes every answer with its verdicts (the judge's, and the content "
        "judge's refusal / degenerate / compliance) to --out and a summary (ASR under the "
        "judge and under the content judge, refusal rate, n, settings) as JSON. On benign prompts, the "
        "refusal rate measures over-refusal.")
    EPILOG: ClassVar[str] = (
        "Example:\n  sqsd-fast evaluate --model BASE --adapter lora_S1 --prompts "
        "advbench.txt --out S1_generations.jsonl")
    # Cannot change a generated answer, so a run may resume with other values: placement,
    # batching (an out-of-memory run resumes with a smaller batch), where outputs go, and
    # the judge (the sidecar holds only generations; judging is redone at the end).
    NOT_FINGERPRINTED: ClassVar[frozenset] = frozenset(
        {"out", "summary", "batch_size", "device", "resume", "no_progress", "quiet", "seed",
         "judge", "judge_model"})
    # Fingerprinted by content, not by their text.
    PATH_FIELDS: ClassVar[tuple] = ("model", "tokenizer", "adapter")
    CHECKS: ClassVar[dict] = {
        "judge": lambda n, v: v if v is None else check_choice(n, v, JUDGES),
        "max_new_tokens": check_positive_int,
        "batch_size": check_positive_int,
        "limit": optional_positive,
        "seed": _int,
        "prompt_field": _optional_text,
        "system_prompt": _optional_text,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.judge is None:
            self.judge = "model" if self.judge_model else "keywords"
        if self.judge == "model" and not self.judge_model:
            raise OptionError("judge_model", "judge 'model' needs judge_model (a guard or "
                              "classifier model directory)")
        if self.judge != "model" and self.judge_model:
            raise OptionError("judge", f"judge {self.judge!r} does not use judge_model "
                              f"{self.judge_model!r}; drop judge_model or use judge 'model'")
        if self.summary is None:
            self.summary = str(self.out) + ".summary.json"
