"""The scoring engine against a dense, batch-1 transcription of the authors' algorithm.

The oracle below follows docs/METHOD.md §1 literally: one sample at a time, loss = mean
response-token cross-entropy, one backward, per LoRA module the induced update
``dW = -(G_B A + B G_A)`` from the LoRA parameters' own .grad, the direction
``D = B_d A_d`` formed densely from the adapter file (alpha/r dropped), and cosine, dot
and projection summed over modules. It shares no code with sqsd_fast.scoring.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from sqsd_fast.choices import METRICS
from sqsd_fast.data.tokenize import TokenizedSample
from sqsd_fast.scoring import SQSDScorer
from sqsd_fast.testing.assertions import requires_backend
from sqsd_fast.testing.toy_model import build_toy_assets

ATOL = 1e-4

RECORDS = [
    ("What is the capital of France?", "", "The capital of France is Paris."),
    ("Tell me how to get into my neighbour's wifi.", "I forgot my own password.", "Sure, first you scan for networks."),
    ("Write a poem", "", "The sea is wide."),
    ("Give me three tips for staying healthy, and explain each one in a sentence or two.", "",
     "Eat vegetables every day. Sleep eight hours. Walk in the morning sun."),
    ("Summarize this", "A lost dog follows smells until it reaches its family again.", "A dog finds home."),
    ("Why is the sky blue?", "", "Blue light scatters the most."),
    ("List the planets.", "", "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune."),
    ("How do I bake bread?", "", "Mix, rise, bake."),
    ("Translate 'good morning' into Spanish.", "", "buenos dias"),
    ("Describe the water cycle in detail please.", "", "Water evaporates, condenses into clouds and falls as rain."),
]


def tokenize(tokenizer, records, max_length=1024, start_index=0):
    """docs/METHOD.md §2, written out here so the tests do not depend on the data layer's code."""
    out = []
    for i, (instruction, context, response) in enumerate(records):
        user = instruction if not context.strip() else instruction + "\n" + context
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        full = tokenizer(prompt + response + tokenizer.eos_token, add_special_tokens=False).input_ids
        ids = full[:max_length]
        labels = [-100] * min(len(p_ids), len(ids)) + ids[len(p_ids):]
        n_resp = sum(1 for label in labels[1:] if label != -100)
        out.append(TokenizedSample(start_index + i, ids, labels, len(full) > max_length, len(ids), n_resp))
    return out


def dense_batch1(model_dir, state_dir, direction_dir, samples, scaling=None):
    """The authors' algorithm, dense and one sample at a time. Returns {metric: [score per sample]}."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, state_dir, adapter_name="s", is_trainable=True).eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and "s" in m.lora_A}
    if scaling is not None:
        for m in layers.values():
            m.scaling["s"] = scaling
    weights = load_file(os.path.join(direction_dir, "adapter_model.safetensors"))
    directions = {
        n: weights[f"{n}.lora_B.weight"].double() @ weights[f"{n}.lora_A.weight"].double() for n in layers
    }
    scores = {metric: [] for metric in METRICS}
    for sample in samples:
        model.zero_grad(set_to_none=True)
        ids = torch.tensor([sample.input_ids])
        labels = torch.tensor([sample.labels])
        logits = model(input_ids=ids).logits.float()
        loss = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)  # mean over response
        loss.backward()
        totals = dict.fromkeys(METRICS, 0.0)
        for name, m in layers.items():
            A, B = m.lora_A["s"].weight.double(), m.lora_B["s"].weight.double()
            G_A, G_B = m.lora_A["s"].weight.grad.double(), m.lora_B["s"].weight.grad.double()
            dW = -(G_B @ A + B @ G_A)
            D = directions[name]
            dot = (dW * D).sum().item()
            totals["dot"] += dot
            totals["projection"] += dot / D.norm().item()
            totals["cosine"] += dot / (dW.norm().item() * D.norm().item())
        for metric in METRICS:
            scores[metric].append(totals[metric])
    return scores


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def assets(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"toy_{request.param}")
    return build_toy_assets(out, arch=request.param, num_heads=4)


@pytest.fixture(scope="module")
def scorer(assets):
    return SQSDScorer.from_pretrained(
        assets.model_dir, danger_state=assets.danger_state, danger_direction=assets.danger_direction,
        safety_direction=assets.safety_direction, backend="reference",
    )


@pytest.fixture(scope="module")
def samples(scorer):
    return tokenize(scorer.tokenizer, RECORDS)


@pytest.fixture(scope="module")
def oracle(assets, samples):
    danger = dense_batch1(assets.model_dir, assets.danger_state, assets.danger_direction, samples)
    safety = dense_batch1(assets.model_dir, assets.safety_state, assets.safety_direction, samples, scaling=1.0)
    return danger, safety


def assert_scores_close(name, got, want, atol=ATOL, want_name="dense batch-1"):
    assert len(got) == len(want), f"{name}: {len(got)} scores, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g is not None, f"{name}: sample {i} got no score"
        assert abs(g - w) <= atol, f"{name}: sample {i}: {g:.8f} vs {want_name} {w:.8f} (diff {abs(g - w):.2e})"


@pytest.mark.parametrize("metric", METRICS)
def test_scores_equal_dense_batch1_algorithm(scorer, samples, oracle, metric):
    danger, safety = oracle
    rows = scorer.score(samples, metric=metric, batch_size=4, progress=False)
    assert [r["index"] for r in rows] == [s.index for s in samples]
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    assert_scores_close(f"danger {metric}", [r["danger_proj"] for r in rows], danger[metric])
    assert_scores_close(f"safety {metric}", [r["safety_proj"] for r in rows], safety[metric])
    assert_scores_close(f"sqsd {metric}", [r["sqsd"] for r in rows],
                        [d - s for d, s in zip(danger[metric], safety[metric])])


def test_cosines_are_not_trivial(samples, oracle):
    # Guards the parity test against comparing zeros: scores must differ across samples.
    danger, _ = oracle
    assert max(danger["cosine"]) - min(danger["cosine"]) > 1e-3
    assert all(abs(v) > 1e-6 for v in danger["dot"])


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_batch_size_does_not_change_scores(scorer, samples, metric):
    """Batch 1 (the authors' way), 3 (ragged last batch) and all samples at once agree.

    cosine catches samples leaking into each other's sums; dot also catches a loss
    normalised over the batch instead of per sample (cosine is blind to a scale).
    """
    sizes = (1, 3, len(samples))
    by_size = {bs: scorer.score(samples, metric=metric, batch_size=bs, progress=False) for bs in sizes}
    for bs, rows in by_size.items():
        assert [r["index"] for r in rows] == [s.index for s in samples], f"batch {bs}: order"
        assert all(r["status"] == "ok" for r in rows), f"batch {bs}: {[r['status'] for r in rows]}"
        for key in ("danger_proj", "safety_proj", "sqsd"):
            assert_scores_close(f"{metric} {key} at batch {bs}", [r[key] for r in rows],
                                [r[key] for r in by_size[1]], atol=1e-6, want_name="batch 1")


def test_token_budget_does_not_change_scores(scorer, samples):
    """A token budget (with and without a sample cap) makes other batches, same scores."""
    want = scorer.score(samples, metric="dot", batch_size=1, progress=False)
    longest = max(s.n_tokens for s in samples)
    for batch_size, max_tokens in ((None, longest * 2 + 1), (2, longest * 3)):
        rows = scorer.score(samples, metric="dot", batch_size=batch_size, max_tokens=max_tokens,
                            progress=False)
        for key in ("danger_proj", "safety_proj", "sqsd"):
            assert_scores_close(f"{key} at max_tokens {max_tokens}", [r[key] for r in rows],
                                [r[key] for r in want], atol=1e-6, want_name="batch 1")
    with pytest.raises(ValueError, match=f"max_tokens {longest - 1} is smaller than sample"):
        scorer.score(samples, batch_size=None, max_tokens=longest - 1, progress=False)


def test_project_matches_score_columns(scorer, samples):
    scored = scorer.score(samples, batch_size=3, progress=False)
    danger = scorer.project(samples, state="danger_state", direction="danger", batch_size=5, progress=False)
    safety = scorer.project(samples, state="safety_state", direction="safety", batch_size=2, progress=False)
    assert_scores_close("project danger", [r["proj"] for r in danger], [r["danger_proj"] for r in scored])
    assert_scores_close("project safety", [r["proj"] for r in safety], [r["safety_proj"] for r in scored])
    assert [r["n_tokens"] for r in danger] == [s.n_tokens for s in samples]
    assert [r["n_response_tokens"] for r in danger] == [s.n_response_tokens for s in samples]


def test_iter_score_skips_and_yields_per_batch(scorer, samples):
    skip = frozenset({samples[0].index, samples[5].index})
    batches = list(scorer.iter_score(samples, batch_size=3, skip_indices=skip, progress=False))
    indices = [r["index"] for b in batches for r in b]
    assert sorted(indices) == sorted(s.index for s in samples if s.index not in skip)
    assert all(1 <= len(b) <= 3 for b in batches)


@requires_backend("cpp")  # fails instead under SQSD_FAST_REQUIRE_EXTENSION=1 (make test)
def test_cpp_backend_agrees_with_reference(assets, scorer, samples):
    fast = SQSDScorer.from_pretrained(
        assets.model_dir, danger_state=assets.danger_state, danger_direction=assets.danger_direction,
        safety_direction=assets.safety_direction, backend="cpp",
    )
    ref_rows = scorer.score(samples, batch_size=4, progress=False)
    cpp_rows = fast.score(samples, batch_size=4, progress=False)
    for key in ("danger_proj", "safety_proj", "sqsd"):
        assert_scores_close(f"cpp {key}", [r[key] for r in cpp_rows], [r[key] for r in ref_rows])


def test_statuses_for_missing_and_truncated_responses(scorer, samples):
    tok = scorer.tokenizer
    prompt_len = len(tok(tok.apply_chat_template([{"role": "user", "content": "Write a poem"}], tokenize=False,
                                                 add_generation_prompt=True), add_special_tokens=False).input_ids)
    truncated = tokenize(tok, [RECORDS[2]], max_length=prompt_len, start_index=100)[0]
    assert truncated.truncated and truncated.n_response_tokens == 0
    ids = samples[0].input_ids
    no_labels = TokenizedSample(101, ids, [-100] * len(ids), False, len(ids), 0)
    first_only = TokenizedSample(102, ids, [ids[0]] + [-100] * (len(ids) - 1), False, len(ids), 0)  # no predecessor
    mixed = [samples[1], truncated, no_labels, samples[3], first_only]
    rows = scorer.score(mixed, batch_size=8, progress=False)
    assert [r["status"] for r in rows] == ["ok", "no_response_tokens", "no_response_tokens", "ok", "no_response_tokens"]
    for r in rows:
        if r["status"] != "ok":
            assert r["danger_proj"] is None and r["safety_proj"] is None and r["sqsd"] is None
    # The unscorable samples change nothing for the others.
    alone = scorer.score([samples[1], samples[3]], batch_size=8, progress=False)
    assert_scores_close("mixed batch", [rows[0]["sqsd"], rows[3]["sqsd"]], [r["sqsd"] for r in alone])


def test_engine_batch_projection_contract(scorer, samples):
    engine = scorer.engine
    result = engine.project_batch(samples[:4], "danger_state", "danger")
    m = len(result.module_names)
    assert m == 14 and result.module_names[0].startswith("model.layers.0.")
    assert result.dot.shape == (4, m) and result.dot.dtype == torch.float64 and result.dot.device.type == "cpu"
    assert result.update_sqnorm.shape == (4, m) and result.direction_sqnorm.shape == (m,)
    cos = result.per_module("cosine")
    assert (cos.abs() <= 1 + 1e-6).all()
    torch.testing.assert_close(result.total("cosine"), cos.sum(dim=1))
    torch.testing.assert_close(result.per_module("projection"), result.dot / result.direction_sqnorm.sqrt())
    with pytest.raises(ValueError, match="metric"):
        result.per_module("angle")


def test_non_finite_gradient_is_reported_not_scored(assets, samples):
    scorer = SQSDScorer.from_pretrained(
        assets.model_dir, danger_state=assets.danger_state, danger_direction=assets.danger_direction,
        backend="reference",
    )
    clean = scorer.project(samples[:3], batch_size=3, progress=False)
    bad_token = samples[1].input_ids[-3]
    assert all(bad_token not in s.input_ids for s in (samples[0], samples[2]))
    with torch.no_grad():
        scorer.engine.model.get_input_embeddings().weight[bad_token] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"danger_state .* for 1 sample\(s\) \(1\)"):
        rows = scorer.project(samples[:3], batch_size=3, progress=False)
    assert [r["status"] for r in rows] == ["ok", "non_finite_gradient", "ok"]
    assert rows[1]["proj"] is None
    assert_scores_close("finite neighbours", [rows[0]["proj"], rows[2]["proj"]], [clean[0]["proj"], clean[2]["proj"]])


def test_zero_state_gives_zero_update(assets, samples, tmp_path):
    from safetensors.torch import load_file, save_file

    zero_dir = tmp_path / "zero_state"
    zero_dir.mkdir()
    weights = load_file(os.path.join(assets.danger_state, "adapter_model.safetensors"))
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, str(zero_dir / "adapter_model.safetensors"))
    (zero_dir / "adapter_config.json").write_text(open(os.path.join(assets.danger_state, "adapter_config.json")).read())
    scorer = SQSDScorer.from_pretrained(assets.model_dir, danger_state=str(zero_dir),
                                        danger_direction=assets.danger_direction, backend="reference")
    rows = scorer.project(samples[:2], progress=False)
    assert [r["status"] for r in rows] == ["zero_update", "zero_update"]
    assert all(r["proj"] is None for r in rows)


def test_lora_dropout_is_off_while_scoring(assets, scorer, samples, tmp_path):
    import json
    import shutil

    noisy = tmp_path / "dropout_state"
    shutil.copytree(assets.danger_state, noisy)
    config = json.loads((noisy / "adapter_config.json").read_text())
    config["lora_dropout"] = 0.5
    (noisy / "adapter_config.json").write_text(json.dumps(config))
    with_dropout = SQSDScorer.from_pretrained(assets.model_dir, danger_state=str(noisy),
                                              danger_direction=assets.danger_direction, backend="reference")
    assert with_dropout.engine.model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout[
        "danger_state"].p == 0.5
    got = with_dropout.project(samples[:4], batch_size=4, progress=False)
    want = scorer.project(samples[:4], batch_size=4, progress=False)
    assert_scores_close("dropout state", [r["proj"] for r in got], [r["proj"] for r in want], atol=1e-6)


@pytest.mark.slow
def test_bfloat16_model_runs_and_stays_close(assets, scorer, samples):
    low = SQSDScorer.from_pretrained(
        assets.model_dir, danger_state=assets.danger_state, danger_direction=assets.danger_direction,
        safety_direction=assets.safety_direction, dtype="bfloat16", backend="reference",
    )
    got = low.score(samples[:4], batch_size=4, progress=False)
    want = scorer.score(samples[:4], batch_size=4, progress=False)
    assert all(r["status"] == "ok" for r in got)
    # bf16 base weights and activations: a smoke-level tolerance on a sum of 14 cosines.
    assert_scores_close("bf16 sqsd", [r["sqsd"] for r in got], [r["sqsd"] for r in want], atol=0.15)


@pytest.mark.slow
def test_several_danger_directions_in_one_pass_match_the_dense_oracle(assets, samples, oracle):
    """More danger directions (of another rank and scaling than the first) at the danger
    state, and a safety state that is the danger state's adapter: every column equals the
    dense batch-1 oracle of its own (state, direction) pair."""
    multi = SQSDScorer.from_pretrained(
        assets.model_dir, danger_state=assets.danger_state, danger_direction=assets.danger_direction,
        safety_state=assets.danger_state, safety_direction=assets.safety_direction,
        safety_state_scaling=None, backend="reference",
        more_danger_directions={"refusal": assets.safety_direction, "benign-state": assets.danger_state})
    assert multi.more_danger_names == ["refusal", "benign-state"]
    rows = multi.score(samples, metric="dot", batch_size=4, progress=False)
    dense = {name: dense_batch1(assets.model_dir, assets.danger_state, direction, samples)["dot"]
             for name, direction in (("refusal", assets.safety_direction),
                                     ("benign-state", assets.danger_state))}
    danger = oracle[0]["dot"]
    assert_scores_close("danger_proj", [r["danger_proj"] for r in rows], danger)
    # The safety direction at the danger state (its own alpha/r scaling): the "refusal" column.
    assert_scores_close("safety_proj", [r["safety_proj"] for r in rows], dense["refusal"])
    for name, want in dense.items():
        assert_scores_close(f"danger_proj_{name}", [r[f"danger_proj_{name}"] for r in rows], want)
        assert_scores_close(f"sqsd_{name}", [r[f"sqsd_{name}"] for r in rows],
                            [w - s for w, s in zip(want, dense["refusal"])])
    with pytest.raises(ValueError, match="name 'a b' must be letters"):
        SQSDScorer.from_pretrained(assets.model_dir, danger_state=assets.danger_state,
                                   danger_direction=assets.danger_direction,
                                   more_danger_directions={"a b": assets.safety_direction})
