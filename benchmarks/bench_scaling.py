"""How scoring time and memory scale: samples, sequence length, batching, processes.

For our engine (fastest available backend) and the floor (forward + backward of the same
batches with the engine's loss, no hooks: _model_setup.floor_pass), one timed pass per
point after a warm-up pass on a few samples; time and the process's peak RSS (CPU) or
allocator peak (CUDA) during the pass:
  samples     N real samples (--data), batch --batch-size (and --axis-max-tokens);
  seq_len     --seq-count synthetic samples of exactly L tokens (random ids, first half
              prompt with label -100, so the response is L/2 tokens), same batching;
  batch_size  --bs-samples real samples at each batch size;
  max_tokens  --bs-samples real samples at each token budget (batch cap --token-batch-cap);
  processes   `sqsd-fast score` on --proc-samples real samples under torchrun with N
              processes of 1 thread each (plus one process with all threads), whole command
              wall time (model loading included) and the largest process's peak RSS.
Writes results/bench_scaling.csv and bench_scaling.png (time per sample,
engine/floor ratio and peak memory against each axis; --preset smollm2 writes
bench_scaling_smollm2.png).

    python benchmarks/bench_scaling.py [--smoke]
    python benchmarks/bench_scaling.py --preset smollm2     # the real model
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

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


# Axis values when not given: the toy presets, --preset smollm2 (sizes for a 135M model
# with a 49k vocabulary on a small CPU), and --smoke (seconds).
TOY_DEFAULTS = dict(sample_counts="32,64,128,256", seq_lens="64,128,256,512", seq_count=32,
                    batch_sizes="1,2,4,8,16,32", max_tokens_list="", axis_max_tokens=None,
                    processes="", proc_samples=64)
SMOKE_DEFAULTS = dict(sample_counts="4,8", seq_lens="16,32", seq_count=4, batch_sizes="1,4",
                      max_tokens_list="", axis_max_tokens=None, processes="", proc_samples=4)
SMOLLM2_DEFAULTS = dict(sample_counts="", seq_lens="64,128,256,512,1024", seq_count=12,
                        batch_sizes="1,4,8", max_tokens_list="512,1024,2048,4096",
                        axis_max_tokens=2048, processes="1,2", proc_samples=96)


def main(argv=None):
    parser = base_parser(__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--sample-counts", default=None, help="default 32,64,128,256")
    parser.add_argument("--seq-lens", default=None, help="default 64,128,256,512")
    parser.add_argument("--seq-count", type=int, default=None, help="default 32")
    parser.add_argument("--batch-sizes", default=None, help="default 1,2,4,8,16,32")
    parser.add_argument("--max-tokens-list", default=None, help="token budgets of the max_tokens axis")
    parser.add_argument("--token-batch-cap", type=int, default=64)
    parser.add_argument("--bs-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of the samples and seq_len axes")
    parser.add_argument("--axis-max-tokens", type=int, default=None,
                        help="token budget of the samples and seq_len axes (default none; 2048 for smollm2)")
    parser.add_argument("--processes", default=None, help="process counts of the processes axis, e.g. 1,2")
    parser.add_argument("--proc-samples", type=int, default=None)
    parser.add_argument("--backend", default=None, help="engine backend (default: fastest available)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    setup(args)
    if args.smoke:
        defaults = SMOKE_DEFAULTS
        args.bs_samples, args.batch_size, args.max_length = 8, 4, 64
    else:
        defaults = SMOLLM2_DEFAULTS if args.preset == "smollm2" else TOY_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    counts, lens, sizes = ints(args.sample_counts), ints(args.seq_lens), ints(args.batch_sizes)
    budgets, procs = ints(args.max_tokens_list), ints(args.processes)
    st = build_setup(args, n_samples=max(counts + [args.bs_samples, args.proc_samples if procs else 0]))
    device = st.device
    facts = env_facts(device)

    from sqsd_fast.data.batching import length_bucketed_batches
    from sqsd_fast.ops import backend_available
    from sqsd_fast.scoring.scorer import SQSDScorer

    backend = args.backend or next((b for b in (("triton", "cpp") if device.type == "cuda" else ("cpp",))
                                    if backend_available(b, device)), "reference")
    scorer = SQSDScorer.from_peft_model(st.model, danger_state=STATE, danger_direction=DIRECTION,
                                        backend=backend, tokenizer=st.tokenizer)

    def engine(samples, bs, max_tokens):
        scorer.project(samples, batch_size=bs, max_tokens=max_tokens, progress=False)

    def floor(samples, bs, max_tokens):
        floor_pass(st, length_bucketed_batches(samples, bs, max_tokens))

    rows = []
    common = {**facts, "preset": st.cfg["name"], "dtype": str(st.dtype).removeprefix("torch.")}

    def point(axis, value, samples, bs, max_tokens=None):
        n_tok = sum(s.n_tokens for s in samples)
        for name, fn in (("engine", engine), ("floor", floor)):
            fn(samples[: max(2, min(len(samples) // 4, 2 * bs))], bs, max_tokens)  # warm-up
            mem = measure_peak_memory(lambda: fn(samples, bs, max_tokens), device)
            rows.append({**common, "axis": axis, "value": value, "method": name,
                         "backend": backend if name == "engine" else "-", "samples": len(samples),
                         "batch_size": bs, "max_tokens": max_tokens or "", "tokens": n_tok,
                         "time_s": mem.seconds, "ms_per_sample": 1e3 * mem.seconds / len(samples),
                         "tokens_per_s": n_tok / mem.seconds, "extra_peak_MB": mem.extra_bytes / 2**20,
                         "peak_MB": mem.peak_bytes / 2**20, "mem_method": mem.method})
        rows[-2]["x_floor"] = rows[-2]["time_s"] / rows[-1]["time_s"]
        print(f"  {axis}={value} done", file=sys.stderr, flush=True)

    for n in counts:
        point("samples", n, st.samples[:n], args.batch_size, args.axis_max_tokens)
    vocab = st.model.get_input_embeddings().weight.shape[0]
    for length in lens:
        point("seq_len", length, synthetic_samples(args.seq_count, length, min(vocab, len(st.tokenizer))),
              args.batch_size, args.axis_max_tokens)
    for bs in sizes:
        point("batch_size", bs, st.samples[: args.bs_samples], bs)
    for budget in budgets:
        point("max_tokens", budget, st.samples[: args.bs_samples], args.token_batch_cap, budget)
    if procs:
        rows.extend(processes_axis(args, st, procs, common))

    print_table(rows, ["axis", "value", "method", "samples", "batch_size", "max_tokens", "tokens", "time_s",
                       "ms_per_sample", "tokens_per_s", "x_floor", "peak_MB", "extra_peak_MB"],
                title=f"{st.cfg['name']} {facts['device']} threads={facts['threads']}, engine backend {backend}")
    write_results(args, SCRIPT, rows)
    if not args.no_plot and not args.no_csv:
        name = SCRIPT if st.cfg["name"] in ("cpu-llama", "smoke") else f"{SCRIPT}_{st.cfg['name']}"
        plot(rows, Path(args.out_dir) / f"{name}.png", title=f"{st.cfg['name']} on {facts['device']} "
             f"({facts['threads']} threads, {facts['date_utc'][:10]})")
    return 0


def processes_axis(args, st, procs, common) -> list[dict]:
    """`sqsd-fast score` under torchrun with N single-thread processes, and one process
    with every thread: wall time of the whole command and the largest process's peak RSS."""
    import json
    import os
    import subprocess
    import tempfile

    from sqsd_fast.testing.toy_model import save_lora_adapters

    work = Path(tempfile.mkdtemp(prefix="sqsd_scaling_"))
    adapters = st.adapter_dirs or save_lora_adapters(st.model, (STATE, DIRECTION), work / "adapters")
    model_dir = st.model_dir
    data = work / "data.jsonl"
    samples = st.samples[: args.proc_samples]
    with open(data, "w") as f:
        for s in samples:  # token ids as given: every configuration scores the same tokens
            f.write(json.dumps({"input_ids": list(s.input_ids), "labels": list(s.labels)}) + "\n")
    threads = common["threads"]
    configs = [(1, threads)] + [(n, 1) for n in procs]
    rows = []
    for n, per_proc in configs:
        out = work / f"scores_{n}x{per_proc}.jsonl"
        argv = ["score", "--model", model_dir, "--danger-state", adapters[STATE],
                "--danger-direction", adapters[DIRECTION], "--safety-direction", adapters[DIRECTION],
                "--data", str(data), "--out", str(out), "--no-progress", "--quiet",
                "--max-length", str(args.max_length), "--device", st.device.type]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                    "--no-python", str(Path(sys.executable).parent / "sqsd-fast")]
        # A child that reports its children's peak RSS: torchrun waits for its ranks, so
        # the largest rank's high-water mark reaches it.
        probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                 "rc = subprocess.call(sys.argv[1:]); "
                 "print(rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        env = {**os.environ, "OMP_NUM_THREADS": str(per_proc)}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        result = subprocess.run([sys.executable, "-c", probe, *launcher, *argv], env=env,
                                capture_output=True, text=True)
        rc, seconds, maxrss_kb = result.stdout.strip().splitlines()[-1].split()
        if rc != "0":
            raise SystemExit(f"processes axis: {n} x {per_proc} threads failed:\n{result.stderr[-3000:]}")
        n_scored = sum(1 for _ in open(out))
        rows.append({**common, "axis": "processes", "value": n, "method": "score-cli", "backend": "cli",
                     "samples": n_scored, "threads_per_process": per_proc,
                     "tokens": sum(s.n_tokens for s in samples), "time_s": float(seconds),
                     "ms_per_sample": 1e3 * float(seconds) / n_scored,
                     "tokens_per_s": sum(s.n_tokens for s in samples) / float(seconds),
                     "peak_MB": int(maxrss_kb) / 1024, "mem_method": "ru_maxrss largest process"})
        print(f"  processes={n} x {per_proc} threads done ({float(seconds):.1f} s)", file=sys.stderr, flush=True)
    return rows


def plot(rows, path, title):
    """One column per axis present: ms per sample, engine / floor time, peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a for a in ("samples", "seq_len", "batch_size", "max_tokens", "processes")
             if any(r["axis"] == a for r in rows)]
    fig, axes = plt.subplots(3, len(names), figsize=(4.3 * len(names), 9.5), squeeze=False)
    for j, axis in enumerate(names):
        pts = [r for r in rows if r["axis"] == axis]
        series = sorted({(r["method"], r.get("threads_per_process", "")) for r in pts})
        for k, (method, per_proc) in enumerate(series):
            mine = [r for r in pts if r["method"] == method and r.get("threads_per_process", "") == per_proc]
            label = method + (f", {per_proc} thread(s) each" if per_proc != "" else "")
            style = "s--" if method == "floor" else "o-"
            xs = [r["value"] for r in mine]
            axes[0][j].plot(xs, [r["ms_per_sample"] for r in mine], style, label=label, color=f"C{k}")
            axes[2][j].plot(xs, [r["peak_MB"] for r in mine], style, label=label, color=f"C{k}")
        ratio = [(r["value"], r["x_floor"]) for r in pts if "x_floor" in r]
        if ratio:
            axes[1][j].plot([x for x, _ in ratio], [y for _, y in ratio], "o-", color="C2")
            axes[1][j].axhline(1.10, color="grey", ls=":", label="goal 1.10")
            axes[1][j].legend()
        else:
            axes[1][j].set_visible(False)
        for a in (axes[0][j], axes[1][j], axes[2][j]):
            if axis != "processes":
                a.set_xscale("log", base=2)
            a.set_xlabel(axis)
        axes[0][j].set_ylabel("ms per sample")
        axes[1][j].set_ylabel("engine time / floor time")
        axes[2][j].set_ylabel("peak MB (RSS or CUDA)")
        axes[0][j].legend(fontsize=8)
        axes[2][j].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
