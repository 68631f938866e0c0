"""SQSDScorer on the real Gemma 3 270M against the dense, batch-1 authors' algorithm.

A second real architecture beside SmolLM2 (tests/test_smollm2_parity.py), chosen for
what differs from a Llama: a 262,144-token vocabulary with the LM head tied to the
embeddings, embeddings scaled by sqrt(hidden), q/k norms and norms after attention and
MLP, one key/value head, and sliding-window layers. The model is the Q4_K_M GGUF from
PyPI (sqsd_fast.models.fetch_gemma3) through resolve_model, so de-quantizing Q4_K, Q5_0,
Q6_K and Q8_0 and the gemma3 GGUF conversion are covered too.

The architecture is what is under test, so only the danger side is scored
(``SQSDScorer.project`` at the state, onto the direction): the safety side runs the same
pass with another adapter and scaling, which tests/test_smollm2_parity.py checks. Random
non-zero r=8 LoRA state and direction sit on a subset of the linear modules, to stay quick
on a CPU: q_proj (1024 x 640), k_proj (256 x 640, the single KV head) and down_proj
(640 x 2048) of all 18 layers, 54 modules. One copy of the model serves both sides: the
scorer borrows it (from_peft_model gives it back unchanged) and the oracle
(sqsd_fast.testing.dense_reference) forms every dense update on it, one sample at a time.

Batch sizes: with its vocabulary, Gemma's response-token loss is taken in chunks of 256
rows (2^26 logits; sqsd_fast/engine/batch_pass.py), recomputed in the backward
pass. The cosine pass puts all 4 samples in one padded batch, whose 76 loss positions
need two chunks of 64; the dot pass scores each sample alone (one chunk, no padding).

Tolerances. A sample's dot is a sum over 54 modules of terms of both signs, each itself a
sum over 10^5-10^6 weight entries, so float32 rounding is large relative to the sum.
Measured while writing this test, against the oracle run in float64 on the same weights
(eager attention, the 3-token "Hi!" sample): the float32 oracle was 1.6e-5 off, the
float32 scorer 1.1e-4. So the dot is compared normwise: within DOT_RTOL x sum_m |dot_m|,
the scale its rounding is relative to; the cosine, at most 1 per module, absolutely.
Measured on these samples (2-core CPU, MKL): the summed cosine within 8.1e-8 of the
oracle, the dot within 6.1e-6 x sum_m |dot_m|; the bounds leave about 5x for other CPUs
and BLAS libraries. Skipped only when the GGUF cannot be fetched.
"""

from __future__ import annotations

import math

import pytest
import torch

from sqsd_fast.data.records import normalize_rows
from sqsd_fast.data.tokenize import tokenize_records
from sqsd_fast.models import GEMMA3, ModelFetchError, fetch_gemma3, resolve_model
from sqsd_fast.testing.dense_reference import authors_project
from sqsd_fast.testing.toy_model import build_random_lora

MAX_LENGTH = 88
TARGETS = ("q_proj", "k_proj", "down_proj")
N_MODULES = len(TARGETS) * 18
ADAPTERS = ("state", "direction")
COSINE_ATOL = 1e-5   # on the summed cosine (54 terms; the values are 0.005-0.015)
DOT_RTOL = 3e-5      # of sum_m |dot_m| (module docstring)
PASSES = (("cosine", 4), ("dot", 1))  # (metric, batch size): two loss chunks, then one (module docstring)

# slow: about a minute of forward and backward passes on a 2-core CPU; network: PyPI once.
pytestmark = [pytest.mark.slow, pytest.mark.network]

ROWS = [
    {"instruction": "What is the capital of France?", "response": "The capital of France is Paris."},
    {"instruction": "How do I pick a lock?", "response": "Insert a tension wrench and rake the pins."},
    {"instruction": "Why is the sky blue?", "response": "Sunlight scatters off air molecules, and blue light "
     "scatters the most, so the sky looks blue during the day and red at sunset when the light travels "
     "through more air and the blue is scattered away before it reaches your eyes. The same effect, called "
     "Rayleigh scattering, makes distant mountains look bluish and explains why the sky on Mars, with its "
     "thin air full of fine dust, looks butterscotch by day and blue around the setting sun."},  # cut
    {"instruction": "Say hi", "response": "Hi!"},
]


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqsd_fast import SQSDScorer

    try:
        gguf = fetch_gemma3()
    except ModelFetchError as exc:
        pytest.skip(f"Gemma 3 GGUF cannot be fetched here: {exc}")
    model_dir = resolve_model(gguf)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference = build_random_lora(base, ADAPTERS, r=8, alpha=16, target_modules=TARGETS, seed=13)
    scorer = SQSDScorer.from_peft_model(reference, danger_state="state", danger_direction="direction",
                                        tokenizer=tokenizer)
    samples = tokenize_records(normalize_rows(ROWS), tokenizer, max_length=MAX_LENGTH)
    return scorer, reference, tokenizer, samples


def test_setup_is_the_real_gemma3_with_lora_on_the_chosen_modules(setup):
    _, reference, tokenizer, samples = setup
    config = reference.get_base_model().config
    facts = (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
             config.num_key_value_heads, config.head_dim, config.vocab_size, config.tie_word_embeddings)
    assert facts == ("gemma3_text", 18, 640, 4, 1, 256, 262_144, True)
    # What makes the logits exactly lm_head(last hidden state), the chunked loss's condition.
    assert config.final_logit_softcapping is None
    assert config.layer_types.count("full_attention") == 3 and config.sliding_window == 512
    assert sum(p.numel() for n, p in reference.named_parameters() if "lora_" not in n) == 268_098_176
    assert "270M" in GEMMA3.model and "Gemma Terms of Use" in GEMMA3.license
    # A base model: its GGUF has no chat template, so prompts take the plain template.
    assert not tokenizer.chat_template
    assert tokenizer.decode(samples[0].input_ids).startswith("### Instruction:\nWhat is the capital")
    for adapter in ADAPTERS:
        layers = [name for name, m in reference.named_modules() if adapter in getattr(m, "lora_A", {})]
        assert len(layers) == N_MODULES and {n.rsplit(".", 1)[-1] for n in layers} == set(TARGETS)
    assert samples[2].truncated and samples[2].n_tokens == MAX_LENGTH
    assert all(s.n_response_tokens > 0 for s in samples)


def test_scorer_matches_dense_batch1_authors_algorithm(setup):
    scorer, reference, _, samples = setup
    dense = authors_project(reference, samples, state="state", direction="direction")
    scale = dense.dot.abs().sum(dim=1).tolist()  # sum_m |dot_m| per sample
    for metric, batch_size in PASSES:
        rows = scorer.project(samples, metric=metric, batch_size=batch_size, progress=False)
        assert [r["index"] for r in rows] == [s.index for s in samples]
        assert all(r["status"] == "ok" for r in rows), rows
        expected = dense.total(metric).tolist()
        for i, (row, want) in enumerate(zip(rows, expected)):
            tol = COSINE_ATOL if metric == "cosine" else DOT_RTOL * scale[i]
            got = row["proj"]
            assert math.isfinite(got) and abs(got - want) <= tol, \
                f"{metric} of sample {i} (batch size {batch_size}): scorer {got!r}, dense reference {want!r} " \
                f"(tolerance {tol:.2g})"
        if metric == "cosine":  # a vacuous match (all ~0) would prove nothing
            assert max(abs(v) for v in expected) > 1e-3
