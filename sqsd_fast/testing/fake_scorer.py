"""A stand-in scorer and a workspace of paths, for testing the pipeline and the CLI fast.

:class:`FakeScorer` follows the ``SQSDScorer`` contract of docs/CONTRACTS.md (``iter_score``
and ``iter_project`` yield one list of rows per length-bucketed batch) but computes cheap,
deterministic numbers from the token ids, so the run logic (ordering, ranks, formats,
resume) is tested in milliseconds without a model. Install it with
``monkeypatch.setattr(sqsd_fast.app.pipeline, "load_scorer", lambda options: FakeScorer())``.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from sqsd_fast.data.batching import length_bucketed_batches
from sqsd_fast.testing.toy_model import build_toy_tokenizer

RECORDS = [
    {"instruction": "Write a haiku about rain.", "context": "", "response": "Soft rain on the roof."},
    {"instruction": "What is 2 + 2?", "context": "", "response": "4"},
    {"instruction": "Summarize.", "context": "The fox jumps over the lazy dog again and again.",
     "response": "A fox keeps jumping over a dog."},
    {"instruction": "Name three planets.", "context": "", "response": "Mars, Venus, Earth."},
    {"instruction": "Give one tip for sleep.", "context": "", "response": "Keep a regular schedule."},
    {"instruction": "Translate 'thank you' to French.", "context": "", "response": "Merci."},
    {"instruction": "Describe the water cycle in detail, step by step, for a child. " * 3,
     "context": "", "response": "Water goes up, clouds form, rain falls."},
    {"instruction": "Tell me a joke.", "context": "", "response": "Why did the bread rise? Yeast."},
    {"instruction": "Is the sky blue?", "context": "", "response": "Yes, on a clear day."},
    {"instruction": "List two colors.", "context": "", "response": "Red and blue."},
    {"instruction": "Spell 'cat'.", "context": "", "response": "C-A-T."},
]


class FakeScorer:
    """Contract-shaped stand-in. fail_after: raise `error` after that many batches."""

    model = None   # no model: the pipeline takes the CPU's default token budget

    def __init__(self, fail_after=None, error=KeyboardInterrupt, sleep_after_first=0.0):
        self.fail_after, self.error, self.sleep = fail_after, error, sleep_after_first
        self.scored: list[int] = []   # the indices of the samples it was asked to score

    @staticmethod
    def _values(s):
        danger = (sum(s.input_ids) % 101) / 101.0
        safety = (len(s.input_ids) % 13) / 13.0
        return danger, safety

    def _batches(self, samples, batch_size, skip_indices, max_tokens=None):
        todo = [s for s in samples if s.index not in skip_indices]
        self.scored = [s.index for s in todo]
        for k, batch in enumerate(length_bucketed_batches(todo, batch_size, max_tokens)):
            if self.fail_after is not None and k == self.fail_after:
                raise self.error("simulated interruption")
            yield batch
            if k == 0 and self.sleep:
                time.sleep(self.sleep)

    def iter_score(self, samples, *, metric="cosine", batch_size=8, max_tokens=None,
                   skip_indices=frozenset(), progress=True):
        for batch in self._batches(samples, batch_size, skip_indices, max_tokens):
            rows = []
            for s in batch:
                ok = s.n_response_tokens > 0
                d, sf = self._values(s)
                scale = {"cosine": 1.0, "dot": 3.0, "projection": 2.0}[metric]
                rows.append({"index": s.index, "danger_proj": d * scale if ok else None,
                             "safety_proj": sf * scale if ok else None,
                             "sqsd": (d - sf) * scale if ok else None, "n_tokens": s.n_tokens,
                             "n_response_tokens": s.n_response_tokens,
                             "status": "ok" if ok else "no_response_tokens"})
            yield rows

    def iter_project(self, samples, *, state="danger_state", direction="danger",
                     metric="cosine", batch_size=8, max_tokens=None, skip_indices=frozenset(),
                     progress=True):
        assert (state, direction) == ("danger_state", "danger")
        for batch in self._batches(samples, batch_size, skip_indices, max_tokens):
            yield [{"index": s.index, "proj": self._values(s)[0] if s.n_response_tokens else None,
                    "n_tokens": s.n_tokens, "n_response_tokens": s.n_response_tokens,
                    "status": "ok" if s.n_response_tokens else "no_response_tokens"}
                   for s in batch]


@functools.lru_cache(maxsize=None)
def _toy_tokenizer():
    return build_toy_tokenizer()


def make_workspace(root: Path, records=RECORDS) -> dict:
    """A model dir (toy tokenizer + config.json), three adapter dirs and a data file."""
    model = root / "model"
    _toy_tokenizer().save_pretrained(model)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    paths = {"model": model}
    for name in ("danger_state", "danger_direction", "safety"):
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text("{}")
        paths[name] = root / name
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["data"] = data
    return paths


def score_args(workspace: dict, out, *extra) -> list[str]:
    """``sqsd-fast score`` arguments for a :func:`make_workspace` workspace."""
    return ["score", "--model", str(workspace["model"]),
            "--danger-state", str(workspace["danger_state"]),
            "--danger-direction", str(workspace["danger_direction"]),
            "--safety-direction", str(workspace["safety"]), "--data", str(workspace["data"]),
            "--out", str(out), "--batch-size", "3", "--max-length", "64", *extra]
