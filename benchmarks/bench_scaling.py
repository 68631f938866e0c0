"""How scoring time scales: number of samples, sequence length, batch size.

For our engine (fastest available backend) and the floor (plain forward + backward of
the same batches, no hooks), one timed pass per point after a warm-up pass on a few
samples:
  samples     N real samples (--data), batch --batch-size;
  seq_len     --seq-count synthetic samples of exactly L tokens (random ids, first half
              prompt with label -100), batch --batch-size;
  batch_size  --bs-samples real samples at each batch size.
Writes benchmarks/results/bench_scaling.csv and bench_scaling.png (time per sample and
engine/floor ratio against each axis).

    python benchmarks/bench_scaling.py [--smoke]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from _model_setup import DIRECTION, STATE, add_model_args, build_setup, floor_pass  # noqa: E402
from common import base_parser, env_facts, measure_peak_memory, print_table, setup, write_results  # noqa: E402

SCRIPT = "bench_scaling"


def synthetic_samples(n, length, vocab, seed=0):
    from sqsd_fast.data.tokenize import TokenizedSample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.randrange(16, vocab) for _ in range(length)]
        half = length // 2
        labels = [-100] * half + ids[half:]
        out.append(TokenizedSample(index=i, input_ids=ids, labels=labels, truncated=False,
                                   n_tokens=length, n_response_tokens=length - half - (1 if half == 0 else 0)))
    return out


def ints(text):
    return [int(x) for x in text.split(",") if x]


def main(argv=None):
    parser = base_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--sample-counts", default="32,64,128,256")
    parser.add_argument("--seq-lens", default="64,128,256,512")
    parser.add_argument("--seq-count", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--bs-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of the samples and seq_len axes")
    parser.add_argument("--backend", default=None, help="engine backend (default: fastest available)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    setup(args)
    if args.smoke:
        args.sample_counts, args.seq_lens, args.seq_count = "4,8", "16,32", 4
        args.batch_sizes, args.bs_samples, args.batch_size, args.max_length = "1,4", 8, 4, 64
    counts, lens, sizes = ints(args.sample_counts), ints(args.seq_lens), ints(args.batch_sizes)
    st = build_setup(args, n_samples=max(counts + [args.bs_samples]))
    device = st.device
    facts = env_facts(device)

    from sqsd_fast.ops import backend_available
    from sqsd_fast.data.batching import length_bucketed_batches
    from sqsd_fast.scoring.scorer import SQSDScorer

    backend = args.backend or next((b for b in (("triton", "cpp") if device.type == "cuda" else ("cpp",))
                                    if backend_available(b, device)), "reference")
    scorer = SQSDScorer.from_peft_model(st.model, danger_state=STATE, danger_direction=DIRECTION,
                                        backend=backend, tokenizer=st.tokenizer)

    def engine(samples, bs):
        scorer.project(samples, batch_size=bs, progress=False)

    def floor(samples, bs):
        floor_pass(st, length_bucketed_batches(samples, bs))

    rows = []

    def point(axis, value, samples, bs):
        n_tok = sum(s.n_tokens for s in samples)
        for name, fn in (("engine", engine), ("floor", floor)):
            fn(samples[: min(len(samples), 2 * bs)], bs)  # warm-up at this shape
            mem = measure_peak_memory(lambda: fn(samples, bs), device)
            rows.append({**facts, "preset": st.cfg["name"], "axis": axis, "value": value, "method": name,
                         "backend": backend if name == "engine" else "-", "samples": len(samples),
                         "batch_size": bs, "tokens": n_tok, "time_s": mem.seconds,
                         "ms_per_sample": 1e3 * mem.seconds / len(samples),
                         "tokens_per_s": n_tok / mem.seconds, "extra_peak_MB": mem.extra_bytes / 2**20,
                         "mem_method": mem.method})
        rows[-2]["x_floor"] = rows[-2]["time_s"] / rows[-1]["time_s"]
        print(f"  {axis}={value} done", file=sys.stderr, flush=True)

    for n in counts:
        point("samples", n, st.samples[:n], args.batch_size)
    vocab = st.model.get_input_embeddings().weight.shape[0]
    for length in lens:
        point("seq_len", length, synthetic_samples(args.seq_count, length, min(vocab, len(st.tokenizer))),
              args.batch_size)
    for bs in sizes:
        point("batch_size", bs, st.samples[: args.bs_samples], bs)

    print_table(rows, ["axis", "value", "method", "samples", "batch_size", "tokens", "time_s", "ms_per_sample",
                       "tokens_per_s", "x_floor", "extra_peak_MB"],
                title=f"{st.cfg['name']} {facts['device']} threads={facts['threads']}, engine backend {backend}")
    write_results(args, SCRIPT, rows)
    if not args.no_plot and not args.no_csv:
        plot(rows, Path(args.out_dir) / f"{SCRIPT}.png", title=f"{st.cfg['name']} on {facts['device']} "
             f"({facts['threads']} threads, {facts['date_utc'][:10]})")
    return 0


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = ("samples", "seq_len", "batch_size")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for j, axis in enumerate(axes_names):
        pts = [r for r in rows if r["axis"] == axis]
        for method, style in (("engine", "o-"), ("floor", "s--")):
            xs = [r["value"] for r in pts if r["method"] == method]
            ys = [r["ms_per_sample"] for r in pts if r["method"] == method]
            axes[0][j].plot(xs, ys, style, label=method)
        ratio = [(r["value"], r["x_floor"]) for r in pts if "x_floor" in r]
        axes[1][j].plot([x for x, _ in ratio], [y for _, y in ratio], "o-", color="C2")
        axes[1][j].axhline(1.10, color="grey", ls=":", label="goal 1.10")
        for a in (axes[0][j], axes[1][j]):
            a.set_xscale("log", base=2)
            a.set_xlabel(axis)
        axes[0][j].set_ylabel("ms per sample")
        axes[1][j].set_ylabel("engine time / floor time")
        axes[0][j].legend()
        axes[1][j].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
