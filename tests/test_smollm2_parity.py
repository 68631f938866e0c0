"""SQSDScorer on the real SmolLM2-135M-Instruct against the dense, batch-1 authors' algorithm.

The model is the Q4_1 GGUF from PyPI (sqsd_fast.models.fetch_smollm2), given to the scorer
as the .gguf file itself, so the GGUF path of ``from_pretrained`` is covered too. Random
non-zero r=8 LoRA states and directions sit on all 210 linear modules (q, k, v, o, gate,
up, down x 30 layers). The oracle (sqsd_fast.testing.dense_reference, the code the
benchmarks time) forms every dense d_out x d_in update, one sample at a time, on its own
copy of the model. Skipped only when the GGUF cannot be fetched.
"""

from __future__ import annotations

import math

import pytest
import torch

from sqsd_fast.data.records import normalize_rows
from sqsd_fast.data.tokenize import tokenize_records
from sqsd_fast.models import ModelFetchError, fetch_smollm2, resolve_model
from sqsd_fast.testing.dense_reference import authors_project
from sqsd_fast.testing.toy_model import ALL_PROJECTIONS, build_random_lora, save_lora_adapters

MAX_LENGTH = 64
N_MODULES = 7 * 30
ADAPTERS = ("danger_state", "danger_direction", "safety")
COSINE_ATOL = 1e-4   # on the summed cosine (210 terms)
DOT_RTOL = 1e-4

ROWS = [
    {"instruction": "What is the capital of France?", "response": "The capital of France is Paris."},
    {"instruction": "Summarize this", "context": "A lost dog follows smells until it reaches its family again.",
     "response": "A dog finds its way home."},
    {"instruction": "How do I pick a lock?", "response": "Insert a tension wrench and rake the pins."},
    {"instruction": "Why is the sky blue?", "response": "Sunlight scatters off air molecules, and blue light "
     "scatters the most, so the sky looks blue during the day and red at sunset when the light travels "
     "through more air and the blue is scattered away before it reaches your eyes."},  # cut at MAX_LENGTH
    {"instruction": "Say hi", "response": "Hi!"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from sqsd_fast import SQSDScorer

    try:
        gguf = fetch_smollm2()
    except ModelFetchError as exc:
        pytest.skip(f"SmolLM2 GGUF cannot be fetched here: {exc}")
    base = AutoModelForCausalLM.from_pretrained(resolve_model(gguf), dtype=torch.float32).eval()
    reference = build_random_lora(base, ADAPTERS, r=8, alpha=16, target_modules=ALL_PROJECTIONS, seed=11)
    dirs = save_lora_adapters(reference, ADAPTERS, tmp_path_factory.mktemp("smollm2_adapters"))
    scorer = SQSDScorer.from_pretrained(str(gguf), danger_state=dirs["danger_state"],
                                        danger_direction=dirs["danger_direction"], safety_direction=dirs["safety"])
    samples = tokenize_records(normalize_rows(ROWS), scorer.tokenizer, max_length=MAX_LENGTH)
    return scorer, reference, samples


def _dense(reference, samples):
    """{"danger"|"safety": AuthorsProjection} from the oracle, with the scorer's state scalings."""
    danger = authors_project(reference, samples, state="danger_state", direction="danger_direction")
    for module in reference.modules():  # the safety state is scored at LoRA scaling 1 (docs/METHOD.md §1)
        if isinstance(getattr(module, "scaling", None), dict) and "safety" in module.scaling:
            module.scaling["safety"] = 1.0
    safety = authors_project(reference, samples, state="safety", direction="safety")
    return {"danger": danger, "safety": safety}


@pytest.mark.network
def test_setup_is_the_real_model_with_lora_everywhere(setup):
    scorer, reference, samples = setup
    template = scorer.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                    add_generation_prompt=True)
    assert template.endswith("<|im_start|>assistant\n")  # the GGUF's ChatML template came through
    assert sum(p.numel() for n, p in reference.named_parameters() if "lora_" not in n) == 134_515_008
    for adapter in ADAPTERS:
        layers = [m for m in reference.modules() if adapter in getattr(m, "lora_A", {})]
        assert len(layers) == N_MODULES
    assert any(s.truncated for s in samples) and all(s.n_response_tokens > 0 for s in samples)
    assert max(s.n_tokens for s in samples) == MAX_LENGTH


@pytest.mark.slow
@pytest.mark.network
def test_scorer_matches_dense_batch1_authors_algorithm(setup):
    scorer, reference, samples = setup
    dense = _dense(reference, samples)
    for metric in ("cosine", "dot"):
        rows = scorer.score(samples, metric=metric, batch_size=3, progress=False)
        assert [r["index"] for r in rows] == [s.index for s in samples]
        assert all(r["status"] == "ok" for r in rows), rows
        expected = {side: dense[side].total(metric).tolist() for side in dense}
        for i, row in enumerate(rows):
            want_sqsd = expected["danger"][i] - expected["safety"][i]
            for got, want, what in ((row["danger_proj"], expected["danger"][i], "danger"),
                                    (row["safety_proj"], expected["safety"][i], "safety"),
                                    (row["sqsd"], want_sqsd, "sqsd")):
                if metric == "cosine":
                    ok = abs(got - want) <= COSINE_ATOL
                else:
                    ok = math.isclose(got, want, rel_tol=DOT_RTOL, abs_tol=0.0)
                assert ok, f"{metric} {what} of sample {i}: scorer {got!r}, dense reference {want!r}"
        if metric == "cosine":  # a vacuous match (all ~0) would prove nothing
            assert max(abs(v) for v in expected["danger"] + expected["safety"]) > 1e-3
