"""Per-sample LoRA projections and norms: general per-sample-gradient tools vs our engine.

Same model, same adapters, same batch. Each method produces, for every sample s and LoRA
module m, ``dot[s, m] = <dW_m, D_m>`` and ``sqnorm[s, m] = ||dW_m||^2`` of the induced
update ``dW_m = -(G_B A + B G_A)``:

  torch.func  ``vmap(grad(loss_of_one_sample))`` with ``functional_call`` over the LoRA
              parameters of the state: materializes every per-sample G_A, G_B, then the
              same low-rank identities as the engine (r x r work only);
  opacus      ``GradSampleModule`` hooks (``p.grad_sample``), same identities afterwards;
              skipped with a note when opacus is not installed (it is not a dependency);
  engine      ``ProjectionEngine.project_batch`` (statistics inside the backward hooks,
              no per-sample gradient is written), with every available backend.

All are checked against one another (relative error of the (S, M) dot and sqnorm
matrices vs torch.func, <= --tol) before times are reported.

    python benchmarks/bench_per_sample.py [--batch-size 8] [--smoke]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _model_setup import DIRECTION, STATE, add_model_args, build_setup, per_sample_mean_loss, train_only_state  # noqa: E402
from authors_algorithm import lora_modules  # noqa: E402
from common import (base_parser, env_facts, measure_peak_memory, measure_repeats, print_table,  # noqa: E402
                    rel_err, setup, write_results)

SCRIPT = "bench_per_sample"


class LowRankStats:
    """Turns per-sample factor gradients into (dot, sqnorm) per module (docs/METHOD.md §3)."""

    def __init__(self, model, state, direction):
        from sqsd_fast.ops import project_directions

        self.items = []
        for name, module in lora_modules(model, state):
            A = module.lora_A[state].weight.detach()
            B = module.lora_B[state].weight.detach()
            V_A, V_B = project_directions(A, B, module.lora_A[direction].weight.detach()[None],
                                          module.lora_B[direction].weight.detach()[None])
            self.items.append((name, A.float(), B.float(), V_A[0], V_B[0], A.float() @ A.float().T,
                               B.float().T @ B.float()))

    @property
    def names(self):
        return [it[0] for it in self.items]

    def __call__(self, grads_A, grads_B):
        """grads_A[m]: (S, r, d_in), grads_B[m]: (S, d_out, r) -> dot, sqnorm (S, M) float64."""
        dots, sqs = [], []
        for (name, A, B, V_A, V_B, AAt, BtB), G_A, G_B in zip(self.items, grads_A, grads_B):
            G_A, G_B = G_A.float(), G_B.float()
            dots.append(-((G_A * V_A).sum(dim=(1, 2)) + (G_B * V_B).sum(dim=(1, 2))))
            gB = G_B.transpose(1, 2) @ G_B          # (S, r, r)
            gA = G_A @ G_A.transpose(1, 2)          # (S, r, r)
            cross = ((G_B.transpose(1, 2) @ B) * (G_A @ A.T).transpose(1, 2)).sum(dim=(1, 2))
            sqs.append((gB * AAt).sum(dim=(1, 2)) + (gA * BtB).sum(dim=(1, 2)) + 2 * cross)
        return torch.stack(dots, 1).double().cpu(), torch.stack(sqs, 1).double().cpu()


def padded_batch(st, batch):
    from sqsd_fast.data.batching import collate

    enc = collate(batch, st.tokenizer.pad_token_id)
    return {k: v.to(st.device) for k, v in enc.items()}


def torch_func_method(st, batch, stats):
    from torch.func import functional_call, grad, vmap

    model = st.model
    enc = padded_batch(st, batch)
    names_A = [f"{n}.lora_A.{STATE}.weight" for n in stats.names]
    names_B = [f"{n}.lora_B.{STATE}.weight" for n in stats.names]

    def run():
        train_only_state(model, STATE)
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

        # No attention_mask under vmap (HF's mask builder branches on its values). Exact for
        # right padding: with a causal mask no real token attends to the padding after it,
        # and padding positions carry label -100, so they add nothing to the loss.
        def loss_one(p, ids, labels):
            logits = functional_call(model, p, (), {"input_ids": ids[None]}).logits
            return per_sample_mean_loss(logits, labels[None])[0]

        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, enc["input_ids"], enc["labels"])
        return stats([grads[n] for n in names_A], [grads[n] for n in names_B])
    return run


def opacus_method(st, batch, stats):
    from opacus import GradSampleModule

    model = st.model
    enc = padded_batch(st, batch)
    modules = dict(lora_modules(model, STATE))

    def run():
        train_only_state(model, STATE)
        model.train()  # opacus captures activations only in training mode (all dropouts are 0 here)
        gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        try:
            model.zero_grad(set_to_none=True)
            logits = gsm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            per_sample_mean_loss(logits, enc["labels"]).sum().backward()
            gA = [modules[n].lora_A[STATE].weight.grad_sample for n in stats.names]
            gB = [modules[n].lora_B[STATE].weight.grad_sample for n in stats.names]
            out = stats(gA, gB)
        finally:
            for n in stats.names:
                for p in (modules[n].lora_A[STATE].weight, modules[n].lora_B[STATE].weight):
                    p.grad_sample = None
            model.zero_grad(set_to_none=True)
            gsm._close()
            model.eval()
        return out
    return run


def engine_method(st, batch, stats, backend):
    from sqsd_fast.scoring.projection import ProjectionEngine
    from sqsd_fast.scoring.scorer import SQSDScorer

    scorer = SQSDScorer.from_peft_model(st.model, danger_state=STATE, danger_direction=DIRECTION,
                                        backend=backend, tokenizer=st.tokenizer)
    engine: ProjectionEngine = scorer.engine
    order = None

    def run():
        nonlocal order
        res = engine.project_batch(batch, STATE, "danger")
        if order is None:  # engine names are relative to the base model; ours carry peft's prefix
            order = [next(i for i, en in enumerate(res.module_names) if n.endswith(en)) for n in stats.names]
        return res.dot[:, order], res.update_sqnorm[:, order]
    return run


def main(argv=None):
    parser = base_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=None, help="relative error (default 1e-4 fp32, 5e-2 bf16)")
    parser.set_defaults(samples=64)
    args = parser.parse_args(argv)
    setup(args)
    if args.smoke:
        args.samples, args.batch_size, args.repeats, args.max_length = 4, 4, 1, 64
    st = build_setup(args, n_samples=max(args.samples, args.batch_size))
    device = st.device
    facts = env_facts(device)
    batch = st.samples[: args.batch_size]
    n_tokens = sum(s.n_tokens for s in batch)
    width = max(s.n_tokens for s in batch)
    tol = args.tol if args.tol is not None else (1e-4 if st.dtype == torch.float32 else 5e-2)
    stats = LowRankStats(st.model, STATE, DIRECTION)

    from sqsd_fast.ops import backend_available

    methods = [("torch.func", torch_func_method(st, batch, stats), "")]
    try:
        import opacus  # noqa: F401

        methods.append((f"opacus {opacus.__version__}", opacus_method(st, batch, stats), ""))
        opacus_note = None
    except ImportError:
        opacus_note = "opacus not installed (pip install opacus): peer skipped"
        print("NOTE:", opacus_note)
    for backend in ("reference", "cpp", "triton"):
        if backend_available(backend, device) and not (backend == "triton" and device.type == "cpu"):
            methods.append((f"engine[{backend}]", engine_method(st, batch, stats, backend), ""))

    results, rows = {}, []
    for name, fn, _ in methods:
        try:
            results[name] = fn()  # also the warm-up
        except Exception as exc:  # a peer that cannot run this model is reported, not fatal
            results[name] = exc
            print(f"{name} failed: {type(exc).__name__}: {str(exc)[:300]}")
    truth_name = next((n for n, _, _ in methods if not isinstance(results[n], Exception)), None)
    truth = results[truth_name]
    errors = {}
    for name, _, _ in methods:
        if not isinstance(results[name], Exception):
            errors[name] = max(rel_err(results[name][0], truth[0]), rel_err(results[name][1], truth[1]))
    bad = {k: v for k, v in errors.items() if not v <= tol}
    for name, fn, _ in methods:
        row = {**facts, "preset": st.cfg["name"], "batch_size": len(batch), "tokens": n_tokens,
               "padded_tokens": width * len(batch), "modules": len(stats.names), "method": name,
               "rel_err_vs": truth_name, "tol": tol}
        if isinstance(results[name], Exception):
            row["status"] = f"failed: {type(results[name]).__name__}: {str(results[name])[:120]}"
        elif bad:
            row["rel_err"] = errors[name]
            row["status"] = "MISMATCH: methods disagree; not timed" if name in bad else "not timed (others disagree)"
        else:
            t = measure_repeats(fn, device, repeats=args.repeats, warmup=0)
            mem = measure_peak_memory(fn, device)
            row.update(rel_err=errors[name], time_ms=t.median_ms, samples_per_s=len(batch) / t.median_s,
                       extra_peak_MB=mem.extra_bytes / 2**20, peak_MB=mem.peak_bytes / 2**20,
                       mem_method=mem.method, status="ok")
        rows.append(row)
    base = next((r for r in rows if r["method"].startswith("torch.func") and "time_ms" in r), None)
    for r in rows:
        if base and "time_ms" in r:
            r["x_torch_func_speed"] = base["time_ms"] / r["time_ms"]
            r["x_torch_func_mem"] = r["extra_peak_MB"] / max(base["extra_peak_MB"], 1e-9)
    if opacus_note:
        rows.append({**facts, "preset": st.cfg["name"], "batch_size": len(batch), "method": "opacus",
                     "status": opacus_note})
    print_table(rows, ["method", "time_ms", "samples_per_s", "x_torch_func_speed", "extra_peak_MB",
                       "x_torch_func_mem", "rel_err", "status"],
                title=f"{st.cfg['name']} {facts['device']} threads={facts['threads']}: batch {len(batch)}, "
                      f"{n_tokens} tokens (padded {width * len(batch)}), {len(stats.names)} LoRA modules")
    write_results(args, SCRIPT, rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
