"""Per-sample query similarity and gradient sketches: the influence API vs a LESS-style loop.

Same model, same LoRA state, same samples, same query (the mean LoRA gradient of the
last ``--queries`` samples, computed once, not timed). Per sample, each method gives the
global cosine between the sample's LoRA-parameter gradient and the query, and a random
projection of that gradient:

  less        the LESS recipe (Xia et al. 2024): batch 1, one forward + backward per
              sample, the LoRA gradient materialized (``torch.autograd.grad`` over the
              state's factors) and flattened, its cosine with the flattened query, and a
              dense Gaussian projection ``g @ R`` (R: P x --less-dim, drawn once, not timed);
  query       GradientStats.query_scores: batched, statistics inside the backward pass;
  sketch      GradientStats.sketch: Kronecker sketches (k1 = r, k2 = --sketch), no gradient
              formed;
  both        GradientStats.compute with the query and the sketch in one pass;
  func        per-sample gradients with ``torch.func`` (``vmap(grad(loss))`` over the
              state's factors, --batch-size samples at a time, each with its own 4-D
              additive attention mask: transformers' mask builder is not vmap-able), then
              the same flatten, cosine and dense projection as the loop.

Memory: one more call of each method under ``measure_peak_memory`` (extra peak RSS over
what was resident before it, benchmarks/common.py). Goal (issue #11): ours at least 10x
less extra peak memory than ``func`` at batch 8.

Checks before timing, against the loop run in float64 on a copy of the model: our
cosines (max abs error <= --cos-atol; the float32 loop's own error is reported too) and
our sketches vs the explicit Kronecker projection of its materialized gradients.
Models: ``toy`` (a random Llama, the benchmarks' cpu-llama preset; smoke preset with
--smoke) and ``smollm2`` (SmolLM2-135M-Instruct, random r=8 LoRA on all 210 projections).

    python benchmarks/bench_influence.py [--models toy,smollm2] [--samples 16] [--smoke]
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _model_setup import (STATE, add_model_args, build_setup, load_rows, load_smollm2_lora,  # noqa: E402
                          per_sample_mean_loss, train_only_state)
from common import (base_parser, env_facts, measure_peak_memory, measure_repeats, print_table,  # noqa: E402
                    rel_err, setup, write_results)

SCRIPT = "bench_influence"


def smollm2_setup(args):
    """SmolLM2-135M-Instruct (GGUF from PyPI, converted once) with random r=8 LoRA adapters."""
    from sqsd_fast.data import read_records, tokenize_records

    model, tok, _ = load_smollm2_lora((STATE, "other"))
    rows, _ = load_rows(args.data, 2 * (args.samples + args.queries))
    return model, tok, tokenize_records(read_records(rows), tok, max_length=args.max_length)


def toy_setup(args):
    st = build_setup(args, n_samples=2 * (args.samples + args.queries))
    return st.model, st.tokenizer, st.samples


def flat_params(model):
    """[(module name, factor, parameter)] of the state, in model order."""
    out = []
    for name, p in model.named_parameters():
        for factor in ("A", "B"):
            tag = f".lora_{factor}.{STATE}."
            if tag in name:
                out.append((name.split(tag)[0].removeprefix("base_model.model."), factor, p))
    return out


def less_loop(model, tok, samples, q_flat, R):
    """Batch 1, materialized gradient, dense projection: (cosines (S,), projections (S, D), grads)."""
    from sqsd_fast.data.batching import collate

    train_only_state(model, STATE)
    params = [p for _, _, p in flat_params(model)]
    cos, proj, grads = [], [], []
    for s in samples:
        enc = collate([s], tok.pad_token_id)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        g = torch.cat([x.flatten() for x in torch.autograd.grad(per_sample_mean_loss(logits, enc["labels"])[0],
                                                                 params)])
        cos.append(float(g @ q_flat / (g.norm() * q_flat.norm())))
        proj.append(g @ R)
        grads.append(g)
    return torch.tensor(cos, dtype=torch.float64), torch.stack(proj), grads


def func_per_sample(model, tok, samples, q_flat, R, batch_size):
    """torch.func per-sample LoRA gradients, batch by batch: (cosines (S,), projections (S, D))."""
    from torch.func import functional_call, grad, vmap

    from sqsd_fast.data.batching import collate, length_bucketed_batches

    train_only_state(model, STATE)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss(p, ids, mask, labels):
        n = ids.shape[0]
        allowed = torch.tril(torch.ones(n, n, dtype=torch.bool)) & mask.bool().unsqueeze(0)
        additive = torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        logits = functional_call(model, p, (ids.unsqueeze(0),),
                                 {"attention_mask": additive[None, None]}).logits
        return per_sample_mean_loss(logits, labels.unsqueeze(0))[0]

    per_sample_grads = vmap(grad(loss), in_dims=(None, 0, 0, 0))
    position = {s.index: i for i, s in enumerate(samples)}
    cos, proj = torch.zeros(len(samples), dtype=torch.float64), torch.zeros(len(samples), R.shape[1])
    for batch in length_bucketed_batches(samples, batch_size):
        enc = collate(batch, tok.pad_token_id)
        grads = per_sample_grads(params, enc["input_ids"], enc["attention_mask"], enc["labels"])
        flat = torch.cat([grads[n].flatten(1) for n in names], dim=1)
        rows = torch.tensor([position[s.index] for s in batch])
        cos[rows] = (flat @ q_flat / (flat.norm(dim=1) * q_flat.norm())).double()
        proj[rows] = flat @ R
    return cos, proj


def kronecker_check(stats, grads, model, size, sketch) -> float:
    """Our sketches vs P_u G_A P_x^T, P_e G_B P_h^T of the loop's materialized gradients."""
    from sqsd_fast.influence import sketch_maps
    from sqsd_fast.engine.sketch import sketch_dense

    maps = sketch_maps(size, stats.shapes(), seed=0)
    layout = [(m, f, p.shape) for m, f, p in flat_params(model)]
    expected = []
    for g in grads:
        parts, at, pieces = {}, 0, []
        for m, f, shape in layout:
            parts[(m, f)] = g[at:at + shape.numel()].view(shape).double()
            at += shape.numel()
        for m in stats.shapes():
            pieces.append(sketch_dense(parts[(m, "A")], parts[(m, "B")], maps[m]))
        expected.append(torch.cat(pieces))
    return rel_err(sketch, torch.stack(expected))


def bench_model(args, name, model, tok, samples):
    from sqsd_fast.influence import GradientStats

    from sqsd_fast.data.tokenize import count_response_tokens

    samples = [s for s in samples if count_response_tokens(s.labels) > 0]   # cut inside the prompt: no loss
    train, queries = samples[:args.samples], samples[args.samples:args.samples + args.queries]
    stats = GradientStats(model, adapter=STATE, tokenizer=tok, batch_size=args.batch_size)
    q = stats.query_gradient(queries)
    q_flat = torch.cat([q.modules[m][0 if f == "A" else 1][0].flatten().float() for m, f, _ in flat_params(model)])
    gen = torch.Generator().manual_seed(0)
    R = torch.randn(q_flat.numel(), args.less_dim, generator=gen) / args.less_dim ** 0.5
    size = args.sketch
    n_tok = sum(s.n_tokens for s in train)

    # The oracle: the loop in float64 on a copy of the model (not timed). Both float32
    # methods are compared with it; ours keeps the gradient's factors, the loop sums P terms.
    model64 = copy.deepcopy(model).double()
    ref_cos, _, grads = less_loop(model64, tok, train, q_flat.double(), R[:, :1].double())
    del model64
    res = stats.compute(train, queries=q, sketch_size=size)
    err_cos = float((res.query_cosine[:, 0] - ref_cos).abs().max())
    err_sketch = kronecker_check(stats, grads, model, size, res.sketch)
    del grads
    loop_cos = less_loop(model, tok, train, q_flat, R)[0]   # also the loop's warm-up
    err_loop = float((loop_cos - ref_cos).abs().max())
    func_cos = func_per_sample(model, tok, train, q_flat, R, args.batch_size)[0]
    err_func = float((func_cos - ref_cos).abs().max())
    ok = err_cos <= args.cos_atol and err_sketch <= args.tol
    print(f"{name}: |cos| up to {float(ref_cos.abs().max()):.3g}; max abs error of the cosines vs float64: "
          f"ours {err_cos:.2e}, loop {err_loop:.2e}; sketch rel err {err_sketch:.2e}{'' if ok else '  MISMATCH'}",
          flush=True)

    runs = {
        "less": lambda: less_loop(model, tok, train, q_flat, R),
        "query": lambda: stats.query_scores(train, q),
        "sketch": lambda: stats.sketch(train, size=size),
        "both": lambda: stats.compute(train, queries=q, sketch_size=size),
        "func": lambda: func_per_sample(model, tok, train, q_flat, R, args.batch_size),
    }
    rows, base = [], None
    for method, fn in runs.items():
        # The check above already ran every code path once: no extra warm-up call.
        t = measure_repeats(fn, torch.device("cpu"), repeats=args.repeats, warmup=0)
        mem = measure_peak_memory(fn, torch.device("cpu"))
        print(f"  {name} {method}: {t.median_s:.2f} s, extra peak {mem.extra_bytes / 2**20:.0f} MB",
              flush=True)
        base = t.median_s if method == "less" else base
        rows.append({"model": name, "method": method, "samples": len(train), "tokens": n_tok,
                     "batch_size": 1 if method == "less" else args.batch_size,
                     "extra_peak_MB": round(mem.extra_bytes / 2**20, 1), "mem_method": mem.method,
                     "lora_params": q_flat.numel(), "modules": len(stats.shapes()),
                     "proj_dim": (args.less_dim if method in ("less", "func")
                                  else (res.sketch.shape[1] if method != "query" else 0)),
                     "seconds": t.median_s, "ms_per_sample": 1e3 * t.median_s / len(train),
                     "speedup_vs_less": base / t.median_s,
                     "cos_abs_err": {"less": err_loop, "func": err_func}.get(method, err_cos),
                     "sketch_rel_err": err_sketch if method != "func" else "",
                     "status": "ok" if ok else "MISMATCH"})
    return rows


def main(argv=None):
    parser = base_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--models", default=None, help="comma-separated: toy, smollm2 (default both; toy with --smoke)")
    parser.add_argument("--queries", type=int, default=4, help="query samples (their mean gradient is the query)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sketch", type=int, default=16, help="k2 of the Kronecker sketch (k1 = r)")
    parser.add_argument("--less-dim", type=int, default=256, help="dimension of the loop's dense projection")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tol", type=float, default=1e-4, help="relative error of the sketches")
    parser.add_argument("--cos-atol", type=float, default=1e-5, help="absolute error of the cosines")
    parser.set_defaults(samples=16, max_length=128)
    args = parser.parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_influence runs on the CPU only for now")
    if args.smoke:
        args.samples, args.queries, args.max_length, args.repeats, args.batch_size = 4, 2, 64, 1, 4
        args.sketch, args.less_dim = 4, 32
    models = (args.models or ("toy" if args.smoke else "toy,smollm2")).split(",")
    ok = True
    for name in models:   # each model's rows are written as soon as they exist
        model, tok, samples = {"toy": toy_setup, "smollm2": smollm2_setup}[name](args)
        rows = bench_model(args, name, model, tok, samples)
        del model
        print_table(rows, ["model", "method", "samples", "tokens", "batch_size", "lora_params", "proj_dim",
                           "seconds", "ms_per_sample", "speedup_vs_less", "extra_peak_MB", "cos_abs_err",
                           "sketch_rel_err", "status"],
                    f"{name}: per-sample query cosine and sketches vs a LESS-style batch-1 loop")
        write_results(args, SCRIPT, [{**r, **env_facts(device)} for r in rows])
        ok = ok and all(r["status"] == "ok" for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
