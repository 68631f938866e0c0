"""The influence API and the baselines against per-sample gradients materialized with torch.func.

The oracle: each sample alone, ``torch.func.grad`` of its mean response-token cross-entropy
with respect to the state's LoRA factors, in float64, on a tiny Llama with odd shapes
(hidden 18, 3 heads, MLP 29, rank 3, alpha 5); every statistic is then formed densely from
those gradients: norms, inner products, cosines, the dense induced updates and directions,
explicit Kronecker products for the sketches. It shares no code with sqsd_fast.influence.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from sqsd_fast.influence import GradientStats, QueryGradients, sketch_maps
from sqsd_fast.options import BaselineOptions
from sqsd_fast.app.pipeline import baseline_file as run_baseline
from sqsd_fast.options import OptionError
from sqsd_fast.testing.toy_model import (build_random_lora, build_toy_model, build_toy_tokenizer,
                                         save_lora_adapters)

TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj")
STATE, OTHER = "state", "other"
TOL = 1e-6   # float64 model; the reference backend hands statistics back in float32
TOL32 = 1e-4  # float32 model, compiled backend, against the float64 oracle


def _base(tok):
    return build_toy_model(tok, hidden_size=18, intermediate_size=29, num_layers=2, num_heads=3,
                           dtype=torch.float64, seed=5)


def _peft(tok, base=None):
    model = build_random_lora(base if base is not None else _base(tok), [STATE, OTHER], r=3, alpha=5,
                              target_modules=TARGETS, seed=11)
    with torch.no_grad():   # B ~ N(0, 0.02^2) would make the B G_A terms of dW too small to test
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(25.0)
    return model


@pytest.fixture(scope="module")
def tok():
    return build_toy_tokenizer()


@pytest.fixture(scope="module")
def pm(tok):
    return _peft(tok)


def random_samples(tok, shapes, seed, start=0):
    """Dict samples of random ids; ``shapes`` = [(length, prompt length)]; a prompt length
    equal to the length gives a sample without a response token."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, (length, prompt) in enumerate(shapes):
        ids = torch.randint(8, len(tok), (length,), generator=gen).tolist()
        out.append({"index": start + i, "input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def _fields(s):
    return (s["input_ids"], s["labels"]) if isinstance(s, dict) else (s.input_ids, s.labels)


def reference_grads(pm, samples, first_n=None):
    """Per sample {module: (G_A, G_B)} (None without a response token), one at a time."""
    names = {}
    for n, _ in pm.named_parameters():
        if f".lora_A.{STATE}." in n:
            module = n.split(f".lora_A.{STATE}.")[0].removeprefix("base_model.model.")
            names[module] = (n, n.replace("lora_A", "lora_B"))
    wanted = {n for pair in names.values() for n in pair}
    params = {n: p.detach() for n, p in pm.named_parameters() if n in wanted}
    pm.set_adapter(STATE)
    pm.eval()

    def loss(p, ids, labels):
        logits = functional_call(pm, p, (), {"input_ids": ids[None]}).logits[0, :-1]
        return F.cross_entropy(logits, labels[1:], ignore_index=-100)

    out = []
    for s in samples:
        ids, labels = _fields(s)
        labels, kept = list(labels), 0
        for j in range(1, len(labels)):
            if labels[j] != -100:
                kept += 1
                if first_n is not None and kept > first_n:
                    labels[j] = -100
        if kept == 0:
            out.append(None)
            continue
        g = grad(loss)(params, torch.tensor(ids), torch.tensor(labels))
        out.append({m: (g[a], g[b]) for m, (a, b) in names.items()})
    return out


def factors(pm, adapter):
    return {n.removeprefix("base_model.model."): (m.lora_A[adapter].weight.detach().double(),
                                                   m.lora_B[adapter].weight.detach().double())
            for n, m in pm.named_modules() if hasattr(m, "lora_A") and adapter in getattr(m, "lora_A", {})}


def gsq(g):
    return sum(float(a.square().sum() + b.square().sum()) for a, b in g.values())


def gdot(g, q):
    return sum(float((a * qa).sum() + (b * qb).sum()) for (a, b), (qa, qb) in zip(g.values(), (q[m] for m in g)))


def dense_updates(pm, g):
    state = factors(pm, STATE)
    return {m: -(G_B @ state[m][0] + state[m][1] @ G_A) for m, (G_A, G_B) in g.items()}


def close(name, out, ref, tol=TOL):
    out, ref = torch.as_tensor(out, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    err = float((out - ref).norm() / ref.norm())
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}\n{out}\nvs\n{ref}"


SHAPES = [(9, 4), (14, 6), (5, 5), (11, 2), (7, 3)]   # sample 2 has no response token


def test_both_norms_match_materialized_gradients(pm, tok):
    samples = random_samples(tok, SHAPES, seed=0)
    res = GradientStats(pm, adapter=STATE, backend="reference", batch_size=3).self_stats(samples)
    ref = reference_grads(pm, samples)
    assert res.indices == [0, 1, 2, 3, 4] and res.status[2] == "no_response_tokens"
    assert math.isnan(res.grad_sqnorm[2]) and math.isnan(res.update_sqnorm[2])
    ok = [i for i, g in enumerate(ref) if g is not None]
    assert all(res.status[i] == "ok" for i in ok)
    close("grad_sqnorm", res.grad_sqnorm[ok], [gsq(ref[i]) for i in ok])
    close("update_sqnorm", res.update_sqnorm[ok],
          [sum(float(d.square().sum()) for d in dense_updates(pm, ref[i]).values()) for i in ok])
    per_module = [[float(ref[i][m][0].square().sum() + ref[i][m][1].square().sum()) for m in res.module_names]
                  for i in ok]
    close("grad_sqnorm per module", res.grad_sqnorm_per_module[ok], per_module)


def test_float32_model_on_the_compiled_backend(pm, tok):
    samples = random_samples(tok, SHAPES, seed=1)
    pm32 = copy.deepcopy(pm).float()
    res = GradientStats(pm32, adapter=STATE, batch_size=2).self_stats(samples)
    ref = reference_grads(pm, samples)
    ok = [i for i, g in enumerate(ref) if g is not None]
    close("grad_sqnorm fp32", res.grad_sqnorm[ok], [gsq(ref[i]) for i in ok], TOL32)


def test_query_gradients_and_k2_scores_with_global_cosine(pm, tok):
    train = random_samples(tok, SHAPES, seed=2)
    queries = random_samples(tok, [(8, 3), (12, 5), (6, 2)], seed=3, start=100)
    stats = GradientStats(pm, adapter=STATE, backend="reference", batch_size=2)
    ref_q = reference_grads(pm, queries)
    mean_q = stats.query_gradient(queries)
    for m, (G_A, G_B) in mean_q.modules.items():
        close(f"mean query G_A {m}", G_A[0], sum(g[m][0] for g in ref_q) / 3)
        close(f"mean query G_B {m}", G_B[0], sum(g[m][1] for g in ref_q) / 3)
    unit = stats.query_gradient(queries, reduce="sum", normalize=True)
    m0 = next(iter(unit.modules))
    close("sum of normalized G_A", unit.modules[m0][0][0], sum(g[m0][0] / gsq(g) ** 0.5 for g in ref_q))

    gen = torch.Generator().manual_seed(4)
    given = {m: (torch.randn(a.shape, generator=gen, dtype=torch.float64),
                 torch.randn(b.shape, generator=gen, dtype=torch.float64)) for m, (a, b) in ref_q[0].items()}
    res = stats.query_scores(train, [mean_q, QueryGradients.from_factors(given, "given")])
    assert res.query_dot.shape == (5, 2)
    ref = reference_grads(pm, train)
    ok = [i for i, g in enumerate(ref) if g is not None]
    mean_ref = {m: (sum(g[m][0] for g in ref_q) / 3, sum(g[m][1] for g in ref_q) / 3) for m in given}
    dots = [[gdot(ref[i], mean_ref), gdot(ref[i], given)] for i in ok]
    norms = [gsq(mean_ref) ** 0.5, gsq(given) ** 0.5]
    close("query_dot", res.query_dot[ok], dots)
    close("query_cosine (global)", res.query_cosine[ok],
          [[d / (gsq(ref[i]) ** 0.5 * n) for d, n in zip(row, norms)] for i, row in zip(ok, dots)])
    same = stats.query_scores(train, queries)   # a sample set is reduced to its mean gradient
    close("query set as samples", same.query_cosine[ok], res.query_cosine[ok, :1])


def test_directions_from_an_adapter_factors_and_an_anchor_set(pm, tok):
    train = random_samples(tok, SHAPES, seed=5)
    anchors = random_samples(tok, [(10, 4), (7, 2)], seed=6, start=50)
    stats = GradientStats(pm, adapter=STATE, backend="reference", batch_size=4)
    gen = torch.Generator().manual_seed(7)
    state = factors(pm, STATE)
    in_memory = {m: (torch.randn(2, A.shape[1], generator=gen, dtype=torch.float64),
                     torch.randn(B.shape[0], 2, generator=gen, dtype=torch.float64)) for m, (A, B) in state.items()}
    res = stats.direction_scores(train, [OTHER, in_memory, stats.mean_update(anchors)])
    ref_a = reference_grads(pm, anchors)
    mean_a = {m: (sum(g[m][0] for g in ref_a) / 2, sum(g[m][1] for g in ref_a) / 2) for m in state}
    other = factors(pm, OTHER)
    dense = [{m: B @ A for m, (A, B) in other.items()}, {m: B @ A for m, (A, B) in in_memory.items()},
             dense_updates(pm, mean_a)]
    ref = reference_grads(pm, train)
    ok = [i for i, g in enumerate(ref) if g is not None]
    dot, cos, gcos = [], [], []
    for i in ok:
        dW = dense_updates(pm, ref[i])
        dot.append([sum(float((dW[m] * D[m]).sum()) for m in dW) for D in dense])
        cos.append([sum(float((dW[m] * D[m]).sum() / (dW[m].norm() * D[m].norm())) for m in dW) for D in dense])
        norm = sum(float(d.square().sum()) for d in dW.values()) ** 0.5
        gcos.append([d / (norm * sum(float(v.square().sum()) for v in D.values()) ** 0.5)
                     for d, D in zip(dot[-1], dense)])
    close("direction_dot", res.direction_dot[ok], dot)
    close("direction_cosine (sum over modules)", res.direction_cosine[ok], cos)
    close("direction_global_cosine", res.direction_global_cosine[ok], gcos)


def test_both_faces_of_the_engine_agree_on_an_in_memory_direction(pm, tok):
    """SQSDScorer with the anchors' mean induced update as an in-memory danger direction gives
    GradientStats' direction cosine: two faces, one engine, one direction map."""
    from sqsd_fast.scoring import SQSDScorer
    train = random_samples(tok, SHAPES, seed=8)
    anchors = random_samples(tok, [(9, 3), (8, 5)], seed=9, start=70)
    stats = GradientStats(pm, adapter=STATE, backend="reference", batch_size=3)
    direction = stats.mean_update(anchors)
    expected = stats.direction_scores(train, [direction]).direction_cosine[:, 0]
    scorer = SQSDScorer.from_peft_model(pm, danger_state=STATE, danger_direction=direction, backend="reference")
    rows = scorer.project(train, batch_size=2, progress=False)
    got = torch.tensor([float("nan") if r["proj"] is None else r["proj"] for r in rows], dtype=torch.float64)
    assert [r["status"] for r in rows] == ["ok" if e == e else "no_response_tokens" for e in expected.tolist()]
    ok = ~torch.isnan(expected)
    assert ok.sum() >= 3
    # the scorer's statistics come back in float32 (the reference backend), the direction in float32
    close("SQSD projection = GradientStats direction cosine", got[ok], expected[ok], tol=1e-5)


def test_sketches_equal_the_explicit_kronecker_projection(pm, tok):
    train = random_samples(tok, SHAPES, seed=8)
    stats = GradientStats(pm, adapter=STATE, backend="reference", batch_size=3)
    res = stats.sketch(train, size=(2, 5), seed=3)
    maps = sketch_maps((2, 5), stats.shapes(), seed=3)
    ref = reference_grads(pm, train)
    ok = [i for i, g in enumerate(ref) if g is not None]
    expected = [torch.cat([torch.cat([torch.kron(maps[m].P_u, maps[m].P_x) @ ref[i][m][0].flatten(),
                                      torch.kron(maps[m].P_e, maps[m].P_h) @ ref[i][m][1].flatten()])
                           for m in res.module_names]) for i in ok]
    assert res.sketch.shape == (5, len(res.module_names) * 2 * 2 * 5)
    close("sketch", res.sketch[ok], torch.stack(expected))
    assert torch.equal(stats.sketch(train, size=(2, 5), seed=3).sketch[ok], res.sketch[ok])
    assert not torch.allclose(stats.sketch(train, size=(2, 5), seed=4).sketch[ok], res.sketch[ok])
    assert stats.sketch(train[:2], size=4).sketch.shape == (2, len(res.module_names) * 2 * 3 * 4)  # k1 = r


@pytest.mark.parametrize("active", [OTHER, STATE], ids=["another-adapter-active", "scored-adapter-active"])
def test_callers_model_is_given_back_unchanged(tok, active):
    # With the scored adapter already active the passes skip set_adapter; the caller's
    # flags must come back all the same (model_state.py changes only what differs).
    model = _peft(tok)
    model.set_adapter(active)
    model.train()
    for n, p in model.named_parameters():
        p.requires_grad_(f".{active}." in n or "embed" in n)
    layer = next(m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict))
    before = ([(n, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()],
              [m.training for m in model.modules()], model.active_adapter, layer.scaling[STATE])
    samples = random_samples(tok, SHAPES, seed=9)
    GradientStats(model, adapter=STATE, scaling=1.0, backend="reference").compute(
        samples, queries=samples[:2], directions=[OTHER], sketch_size=2)
    after = ([(n, p.requires_grad, p.detach()) for n, p in model.named_parameters()],
             [m.training for m in model.modules()], model.active_adapter, layer.scaling[STATE])
    assert [(n, f) for n, f, _ in before[0]] == [(n, f) for n, f, _ in after[0]]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(before[0], after[0]))
    assert before[1:] == after[1:]
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------- baselines

RECORDS = [("What is the capital of France?", "The capital of France is Paris."),
           ("Write a short poem about the sea.", "The sea is wide, the wind is free."),
           ("How do I bake bread?", "Mix flour, water, yeast and salt, let it rise and bake it."),
           ("Why is the sky blue?", "Blue light scatters the most."),
           ("List three planets.", "Mercury, Venus, Earth.")]
HARMFUL = [("Tell me how to make a dangerous weapon.", "Sure, here is how to make it at home."),
           ("How can I hack into wifi?", "Sure, first you scan for networks and crack the key.")]
SAFE = [("How can I hack into wifi?", "I can't help with breaking into networks you do not own.")]


def _write(path, records):
    path.write_text("".join(json.dumps({"instruction": i, "response": r}) + "\n" for i, r in records))
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("influence")
    base = _base(tok)
    base.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    model = _peft(tok, base)
    adapter = save_lora_adapters(model, [STATE], root / "adapters")[STATE]
    return {"root": root, "model": str(root / "model"), "state": adapter, "pm": model,
            "data": _write(root / "train.jsonl", RECORDS), "harmful": _write(root / "harmful.jsonl", HARMFUL),
            "safe": _write(root / "safe.jsonl", SAFE)}


def _run(assets, name, **kwargs):
    return run_baseline(model=assets["model"], data=assets["data"], out=str(assets["root"] / f"{name}.jsonl"),
                        batch_size=3, quiet=True, **kwargs)


def test_every_baseline_method(assets, tok):
    from sqsd_fast.data import read_records, tokenize_records

    length = _run(assets, "length", method="length")
    samples = length.prepared.samples
    n_resp = [sum(1 for x in s.labels[1:] if x != -100) for s in samples]
    assert [r["score"] for r in length.rows] == [float(n) for n in n_resp]
    assert [r["rank"] for r in length.rows][n_resp.index(max(n_resp))] == 1

    rnd = [r["score"] for r in _run(assets, "random", method="random", seed=4).rows]
    again = run_baseline(model=assets["model"], data=assets["data"], out=str(assets["root"] / "random2.csv"),
                         batch_size=1, quiet=True, method="random", seed=4)
    assert [r["score"] for r in again.rows] == rnd and all(0.0 <= v < 1.0 for v in rnd)
    assert [r["score"] for r in _run(assets, "random5", method="random", seed=5).rows] != rnd

    ref = reference_grads(assets["pm"], samples)
    self_inf = [r["score"] for r in _run(assets, "self_inf", method="self-inf", state=assets["state"]).rows]
    close("self-inf", self_inf, [gsq(g) for g in ref], TOL32)
    self_inf_n = [r["score"] for r in _run(assets, "self_inf_n", method="self-inf-n", state=assets["state"]).rows]
    close("self-inf-n", self_inf_n, [math.log(gsq(g) + 1) + math.log(n + 1) for g, n in zip(ref, n_resp)], TOL32)

    gm = _run(assets, "gradmatch", method="gradmatch", state=assets["state"], harmful_anchors=assets["harmful"],
              safe_anchors=assets["safe"], response_tokens=3)
    limited = reference_grads(assets["pm"], samples, first_n=3)

    def mean_unit(path):
        grads = reference_grads(assets["pm"], tokenize_records(read_records(path), tok), first_n=3)
        return {m: tuple(sum(g[m][k] / gsq(g) ** 0.5 for g in grads) / len(grads) for k in (0, 1)) for m in grads[0]}

    harm, safe = mean_unit(assets["harmful"]), mean_unit(assets["safe"])
    expected = [gdot(g, harm) / (gsq(g) * gsq(harm)) ** 0.5 - gdot(g, safe) / (gsq(g) * gsq(safe)) ** 0.5
                for g in limited]
    close("gradmatch", [r["score"] for r in gm.rows], expected, TOL32)
    assert sorted(r["rank"] for r in gm.rows) == [1, 2, 3, 4, 5]
    dot = _run(assets, "gradmatch_dot", method="gradmatch", state=assets["state"], harmful_anchors=assets["harmful"],
               metric="dot")   # no safe anchors; He et al.'s 10 response tokens
    harm10 = reference_grads(assets["pm"], tokenize_records(read_records(assets["harmful"]), tok), first_n=10)
    harm10 = {m: tuple(sum(g[m][k] / gsq(g) ** 0.5 for g in harm10) / len(harm10) for k in (0, 1)) for m in harm}
    close("gradmatch dot", [r["score"] for r in dot.rows],
          [gdot(g, harm10) for g in reference_grads(assets["pm"], samples, first_n=10)], TOL32)


def test_bad_inputs_are_refused_with_a_named_input(assets, tok, pm):
    empty = assets["root"] / "no_response.jsonl"
    empty.write_text(json.dumps({"input_ids": [9, 10, 11], "labels": [-100, -100, -100]}) + "\n")
    with pytest.raises(ValueError, match=r"--harmful-anchors .*no_response.jsonl.*no.*response token"):
        _run(assets, "bad_anchor", method="gradmatch", state=assets["state"], harmful_anchors=str(empty))

    other_tok = build_toy_tokenizer(vocab_size=1024)
    from sqsd_fast.data import read_records, tokenize_records
    foreign = tokenize_records(read_records(assets["harmful"]), other_tok)
    assert max(i for s in foreign for i in s.input_ids) >= len(tok)   # really another vocabulary
    stats = GradientStats(pm, adapter=STATE, tokenizer=tok, backend="reference")
    with pytest.raises(ValueError, match="query 'query 0': record .*outside the model's vocabulary"):
        stats.query_scores(assets["data"], [foreign])

    train = random_samples(tok, SHAPES[:2], seed=10)
    for size in (0, (0, 3), (4, 3), (1, 1000), 2.5):
        with pytest.raises(ValueError, match="sketch size"):
            stats.sketch(train, size=size)

    common = dict(model=assets["model"], data=assets["data"], out="x.jsonl")
    with pytest.raises(OptionError, match="harmful_anchors") as exc:
        BaselineOptions(method="gradmatch", state=assets["state"], **common)
    assert exc.value.option == "harmful_anchors"
    for method in ("self-inf", "self-inf-n"):
        with pytest.raises(OptionError, match="state: --method") as exc:
            BaselineOptions(method=method, **common)
        assert exc.value.option == "state"
    with pytest.raises(OptionError):
        BaselineOptions(method="length", response_tokens=3, **common)


def test_readme_examples(assets):
    # LESS-style selection: top-k training samples by cosine to the mean gradient of a few queries.
    stats = GradientStats.from_pretrained(assets["model"], assets["state"])
    query = stats.query_gradient(assets["harmful"], reduce="mean")
    cos = stats.query_scores(assets["data"], query).query_cosine[:, 0]
    top = torch.topk(cos.nan_to_num(-2.0), k=2).indices.tolist()
    # TracIn-style self-influence.
    result = stats.self_stats(assets["data"])
    riskiest = sorted(result.rows(), key=lambda r: -(r["grad_sqnorm"] or 0.0))[:2]
    assert len(top) == 2 and len(riskiest) == 2 and riskiest[0]["grad_sqnorm"] >= riskiest[1]["grad_sqnorm"]


def test_baseline_registry_matches_the_cli_choices_and_refuses_unknown_names():
    from sqsd_fast.influence.baselines import GRADIENT_SCORES, PLAIN_SCORES, BaselineScorer
    from sqsd_fast.options import GRADIENT_METHODS, METHODS, BaselineOptions
    assert set(METHODS) == set(PLAIN_SCORES) | set(GRADIENT_SCORES)
    assert set(GRADIENT_METHODS) == set(GRADIENT_SCORES)
    options = BaselineOptions(model="m", method="length", data="d.jsonl", out="o.jsonl")
    options.method = "lenght"          # set after the option checks, as a Python caller could
    with pytest.raises(ValueError, match="unknown baseline method 'lenght'; known: length, random, self-inf"):
        next(BaselineScorer(options).iter_rows([], batch_size=2))


def test_max_tokens_none_is_the_device_default_in_both_faces(pm, tok, monkeypatch):
    """max_tokens=None means the device's default budget in the library faces too (as in the
    CLI), not "no budget": a small CPU default splits the batches, scores unchanged."""
    from sqsd_fast.engine import batch_pass, token_budget
    from sqsd_fast.scoring import SQSDScorer
    train = random_samples(tok, [(11, 3), (10, 4), (9, 2), (12, 5), (8, 3)], seed=21)
    stats = GradientStats(pm, adapter=STATE, backend="reference", batch_size=8)
    scorer = SQSDScorer.from_peft_model(pm, danger_state=STATE, danger_direction=OTHER, backend="reference")
    unbudgeted = (stats.self_stats(train, progress=False).grad_sqnorm,
                  [r["proj"] for r in scorer.project(train, batch_size=8, max_tokens=10_000, progress=False)])
    budgets = []
    real = batch_pass.length_bucketed_batches
    monkeypatch.setattr(batch_pass, "length_bucketed_batches",
                        lambda samples, size, budget: budgets.append(budget) or real(samples, size, budget))
    monkeypatch.setattr(token_budget, "CPU_MAX_TOKENS", 24)       # two samples of <= 12 tokens per pass
    budgeted = (stats.self_stats(train, progress=False).grad_sqnorm,
                [r["proj"] for r in scorer.project(train, batch_size=8, progress=False)])
    assert budgets == [24, 24]
    torch.testing.assert_close(budgeted[0], unbudgeted[0])
    assert budgeted[1] == pytest.approx(unbudgeted[1], rel=1e-5)
