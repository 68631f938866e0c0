"""Evaluate a model's safety: answer every prompt greedily, judge the answers, write the
rows and a summary, resumably. The run the CLI and Python share.

    from sqsd_fast.evaluation import evaluate
    result = evaluate(model="BASE", adapter="lora_S1", prompts="advbench.txt",
                      out="gen.jsonl", resume=True)
    result.asr, result.refusal_rate, result.rows

Order of work: paths, devices and the judge model's contract are checked, the prompts
read, the model resolved (a .gguf converted once) and the prompts encoded: every input
error comes before the model loads. The whole run holds ``OUT.lock``. Then the resume
sidecars are checked against the fingerprint -> the model is loaded only if answers are
missing -> batches of answers appended durably to the sidecar -> judging -> ``out`` and
the summary written atomically -> sidecars deleted. The sidecar holds answers only, so an
interruption while judging keeps every answer, and a run may resume with another judge.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sqsd_fast.data.records import looks_like_local_path
from sqsd_fast.data.tokenize import load_tokenizer
from sqsd_fast.evaluation import content_judge, generation, judges
from sqsd_fast.evaluation.content_judge import COMPLIANCE, VERDICTS
from sqsd_fast.evaluation.generation import iter_answers
from sqsd_fast.evaluation.prompts import read_prompts
from sqsd_fast.io.atomic import atomic_write_text
from sqsd_fast.io.checkpoint import ResumeCheckpoint
from sqsd_fast.io.lock import output_lock
from sqsd_fast.io.writers import write_rows
from sqsd_fast.models import resolve_model
from sqsd_fast.options.checks import check_adapter_path, check_device_available, check_model_path, check_output_path
from sqsd_fast.options.evaluate import EvaluateOptions

# Row columns, in order. Untyped: booleans have no writer kind, and every format keeps
# them (JSON true/false, CSV True/False, Parquet bool).
COLUMNS = ("index", "prompt", "response", "refused", "attack_success", "judge",
           "n_new_tokens", "truncated", "judge_output", "verdict", "verdict_reason")
# What the sidecar keeps per answer: everything that does not depend on the judge.
_SIDECAR_COLUMNS = ("index", "prompt", "response", "n_new_tokens", "truncated")


@dataclass
class EvaluateResult:
    options: EvaluateOptions
    rows: list[dict]          # as written to options.out, input order
    summary: dict             # as written to options.summary
    n_resumed: int            # answers taken over from an interrupted run

    @property
    def asr(self) -> float | None:
        return self.summary["asr"]

    @property
    def refusal_rate(self) -> float:
        return self.summary["refusal_rate"]


def evaluate(options: EvaluateOptions | None = None, /, **kwargs) -> EvaluateResult:
    """Generate, judge and summarize (see :class:`EvaluateOptions` for every keyword)."""

    options = options if options is not None else EvaluateOptions(**kwargs)
    check_paths(options)
    with output_lock(options.out):   # one run per --out: sidecars are not shared
        return _evaluate_locked(options)


def _evaluate_locked(options: EvaluateOptions) -> EvaluateResult:
    started = time.perf_counter()
    prompts = read_prompts(options.prompts, field=options.prompt_field, limit=options.limit)
    spec = judges.inspect_judge_model(options.judge_model) if options.judge == "model" else None
    model_source = resolve_model_source(options)     # may convert a GGUF once (cached)
    if options.adapter is not None:
        generation.check_adapter_fits(options.adapter, model_source)
    tokenizer = load_tokenizer(options.tokenizer or model_source, option="--tokenizer")
    encoded = generation.encode_prompts(tokenizer, prompts, options.system_prompt)

    checkpoint = ResumeCheckpoint(options.out, fingerprint(options, len(prompts)))
    done = checkpoint.check(options.resume)           # refuses before anything is written
    stray = sorted(set(done) - set(range(len(prompts))))
    if stray:
        raise ValueError(f"{checkpoint.partial_path} holds answers for indices not in this "
                         f"run (e.g. {stray[0]}); delete the sidecar files to start over")
    rows = {i: {k: r.get(k) for k in _SIDECAR_COLUMNS} for i, r in done.items()}
    if done and not options.quiet:
        print(f"resuming: {len(done)} of {len(prompts)} prompts already answered",
              file=sys.stderr)

    generate_s = 0.0
    if len(rows) < len(prompts):
        t0 = time.perf_counter()
        _seed(options.seed)
        gen = generation.load_generator(model_source, tokenizer, adapter=options.adapter,
                                        dtype=options.dtype, device=options.device)
        checkpoint.start(options.resume)
        try:
            _generate(gen, options, prompts, encoded, rows, checkpoint)
        finally:
            checkpoint.close()
            if not rows:
                checkpoint.finish()   # nothing answered: nothing to resume, no trap on retry
        _release(gen)                 # free its memory before a judge model loads
        generate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ordered = [rows[i] for i in range(len(prompts))]
    judge = judges.build_judge(options.judge, spec, dtype=options.dtype,
                               device=options.device, batch_size=options.batch_size)
    verdicts = judge([r["prompt"] for r in ordered], [r["response"] for r in ordered],
                     progress=options.progress)
    # refused: the keyword test, the judge's own list for a keyword judge (so refused ==
    # not attack_success), the default list next to a model judge.
    phrases = judges.KEYWORD_LISTS.get(options.judge, judges.GCG_REFUSAL_PHRASES)
    for row, verdict in zip(ordered, verdicts):
        # verdict: the content judge's, on every answer whatever decides attack_success
        content = content_judge.judge_answer(row["prompt"], row["response"])
        row.update(refused=judges.find_refusal(row["response"], phrases) is not None,
                   attack_success=verdict.attack_success, judge=options.judge,
                   judge_output=verdict.output, verdict=content.verdict,
                   verdict_reason=content.reason)
    final = [{k: row.get(k) for k in COLUMNS} for row in ordered]
    summary = summarize(options, final, model_source, runtime={
        "generate_s": round(generate_s, 3), "judge_s": round(time.perf_counter() - t0, 3),
        "total_s": round(time.perf_counter() - started, 3)}, n_resumed=len(done))
    write_rows(options.out, final, list(COLUMNS))
    atomic_write_text(options.summary, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    checkpoint.finish()
    return EvaluateResult(options, final, summary, n_resumed=len(done))


def _generate(gen, options: EvaluateOptions, prompts, encoded, rows: dict, checkpoint) -> None:
    """Answer the prompts missing from ``rows``, one durable sidecar append per batch."""

    missing = len(prompts) - len(rows)
    with tqdm(total=missing, desc="generate", unit="prompts", disable=not options.progress,
              dynamic_ncols=True) as bar:
        for batch in iter_answers(gen, encoded, batch_size=options.batch_size,
                                  max_new_tokens=options.max_new_tokens,
                                  skip=frozenset(rows)):
            fresh = [{"index": i, "prompt": prompts[i], "response": gen.decode(a),
                      "n_new_tokens": len(a.token_ids), "truncated": a.truncated}
                     for i, a in batch]
            checkpoint.append(fresh)
            rows.update((r["index"], r) for r in fresh)
            bar.update(len(fresh))


# ------------------------------------------------------------------------- checks


def check_paths(options: EvaluateOptions) -> None:
    """Refuse bad paths and devices before anything is read or loaded."""
    check_output_path(options.out, options.prompts)
    summary, out = Path(options.summary), Path(options.out)
    if summary.suffix.lower() != ".json":
        raise ValueError(f"--summary {options.summary}: must be a .json file")
    if summary.is_dir() or not (summary.parent if str(summary.parent) else Path(".")).is_dir():
        raise ValueError(f"--summary {options.summary}: is a directory or its directory does "
                         f"not exist")
    if summary.resolve() == out.resolve():
        raise ValueError(f"--summary {options.summary} is the same file as --out")
    if not Path(options.prompts).is_file():
        raise ValueError(f"--prompts {options.prompts}: file not found")
    check_device_available(options.device)
    if options.adapter is not None:
        check_adapter_path("--adapter", options.adapter)
    for option, path in (("--tokenizer", options.tokenizer),
                         ("--judge-model", options.judge_model)):
        if path is not None and looks_like_local_path(path) and not Path(path).is_dir():
            raise ValueError(f"{option} {path}: directory not found")


def resolve_model_source(options: EvaluateOptions) -> str:
    """What ``from_pretrained`` loads for --model: ``sqsd_fast.models.resolve_model``
    passes directories and hub ids through and turns a .gguf file into a cached
    de-quantized directory; then the pipeline's model checks apply to it."""
    try:
        source = str(resolve_model(options.model, progress=options.progress))
    except ValueError as exc:
        raise ValueError(f"--model {options.model}: {exc}") from None
    check_model_path(source)
    return source


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def _release(gen) -> None:
    gen.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ fingerprint, summary


def fingerprint(options: EvaluateOptions, n_prompts: int) -> dict:
    """What identifies a run's answers: every field outside NOT_FINGERPRINTED (files and
    directories by content, the prompts hashed in full), the command and the number of
    prompts."""
    return options.fingerprint(whole_file="prompts", n_prompts=n_prompts)


def summarize(options: EvaluateOptions, rows: list[dict], model_source: str, *,
              runtime: dict, n_resumed: int) -> dict:
    import transformers
    judged = [r for r in rows if r["attack_success"] is not None]
    n = len(rows)
    successes = sum(1 for r in judged if r["attack_success"])
    refused = sum(1 for r in rows if r["refused"])
    verdicts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    return {
        "n": n, "n_judged": len(judged), "n_attack_success": successes,
        "asr": successes / len(judged) if judged else None,
        "n_refused": refused, "refusal_rate": refused / n if n else 0.0,
        # the content judge's verdicts of every answer (attack success = compliance)
        "verdicts": verdicts, "asr_content": verdicts[COMPLIANCE] / n if n else None,
        "n_truncated": sum(1 for r in rows if r["truncated"]),
        "judge": options.judge, "judge_model": options.judge_model,
        "model": options.model, "model_source": model_source, "adapter": options.adapter,
        "prompts": options.prompts, "out": options.out,
        "settings": {k: v for k, v in dataclasses.asdict(options).items()
                     if k not in ("model", "adapter", "prompts", "out", "judge",
                                  "judge_model")},
        "runtime": {**runtime, "n_resumed": n_resumed, "device": options.device,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version()},
    }


def format_summary(result: EvaluateResult) -> str:
    """Lines for the CLI to print after a run."""
    s, o = result.summary, result.options
    pct = lambda k, n: f"{100 * k / n:.1f}% ({k} of {n})" if n else "n/a"   # noqa: E731
    judge = o.judge + (f" ({o.judge_model})" if o.judge_model else "")
    model = o.model + (f" + adapter {o.adapter}" if o.adapter else "")
    lines = [f"sqsd-fast evaluate: {s['n']} prompts from {o.prompts}, model {model}",
             f"  attack success rate: {pct(s['n_attack_success'], s['n_judged'])}  "
             f"[judge {judge}]",
             f"  refusal rate (keywords): {pct(s['n_refused'], s['n'])}",
             "  content judge: " + ", ".join(f"{v} {pct(k, s['n'])}" for v, k in s["verdicts"].items())]
    if s["n_judged"] < s["n"]:
        lines.append(f"  unjudged (judge gave no verdict): {s['n'] - s['n_judged']}")
    lines.append(f"  answers cut at --max-new-tokens {o.max_new_tokens}: {s['n_truncated']}")
    for r in [r for r in result.rows if r["attack_success"]][:2]:
        lines.append(f"  e.g. [index {r['index']}] {_snippet(r['prompt'], 40)} -> "
                     f"{_snippet(r['response'], 50)}")
    rt = s["runtime"]
    lines.append(f"  time: generate {rt['generate_s']:.1f}s, judge {rt['judge_s']:.1f}s"
                 + (f", {result.n_resumed} answers resumed" if result.n_resumed else ""))
    lines.append(f"  rows: {o.out}   summary: {o.summary}")
    return "\n".join(lines)


def _snippet(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= width else text[:width - 3] + "...")
