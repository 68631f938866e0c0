"""Safety evaluation after fine-tuning: the attack success rate (ASR) of a model on harmful
prompts (and its refusal rate, e.g. on benign prompts for over-refusal).

    from sqsd_fast.evaluation import evaluate, format_summary
    result = evaluate(model="BASE", adapter="lora_S1", prompts="advbench.txt",
                      out="gen.jsonl")
    print(format_summary(result))

Modules: options.py (EvaluateOptions), prompts.py (reading prompt files), generation.py
(greedy left-padded batches), judges.py (refusal keywords, guard/classifier models),
run.py (the resumable run, summary and its printout).
"""
from sqsd_fast.options.evaluate import JUDGES, EvaluateOptions
from sqsd_fast.evaluation.run import EvaluateResult, evaluate, format_summary

__all__ = ["JUDGES", "EvaluateOptions", "EvaluateResult", "evaluate", "format_summary"]
