"""Query scoring with bergson, timed: the peer side of benchmarks/bench_influence_floor.py.

Run with the python of a venv that has bergson (never this repo's venv; nothing from
sqsd_fast is imported):

    python bergson_query.py --model MODEL_DIR --adapter ADAPTER_DIR \
        --train TRAIN.jsonl --query QUERY.jsonl --work WORKDIR

Two `bergson` CLI runs, each its own process and timed by wall clock:

1. `bergson build --aggregation mean` on the query rows: one stored row, the MEAN gradient
   of the query rows (aggregated before any normalization, as our side's query is).
2. `bergson score --unit_normalize` of the training rows against it: each training
   gradient is unit-normalized and, as the query was stored unnormalized, bergson
   normalizes the one query row as well, so a score is the cosine between a row's gradient
   and the mean query gradient (its sign and order are what our cosine gives).

Choices, to compute what our side computes:
- Gradients of the LoRA parameters only: --model names a copy of the adapter directory;
  bergson sees adapter_config.json, loads its base model and the adapter with
  PeftModel.from_pretrained, and collects the lora_A / lora_B modules only. The copy's
  base_model_name_or_path is set to --model so that no hub name is ever resolved.
- Loss: cross-entropy on the response tokens only (bergson's prompt/completion columns),
  `--loss_reduction mean` (per sample). bergson renders [user, assistant] with the chat
  template and labels the completion text only; appending the tokenizer's eos to the
  completion gives our sequence (apply_chat_template(user, add_generation_prompt=True) +
  output + eos) with our labels (output + eos); the template's own end-of-turn tokens
  after it are unlabelled and, the attention being causal, change nothing. User turn:
  instruction, + "\\n" + input when the input is not blank.
- Projection: bergson 2.5.1's default for build/score is projection_dim 0 (none: exact
  gradients; 16 is the default of trackstar only). That is used unless --projection-dim
  is given; "projection_dim" in the output is null when there is none.
- fp32 (model and scores) and the CPU (CUDA hidden); offline, everything is local.

The last line of stdout is one JSON object: version, build_s, score_s, peak_rss_mb (the
larger max RSS of the two bergson processes, each from os.wait4), projection_dim, scores
(one per training row, in input order: bergson writes row i of its score store for dataset
row i), notes. Each step's output is kept in WORK/{build,score}.{out,err}.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path


def write_rows(src: Path, dst: Path, eos: str) -> int:
    """Alpaca rows -> bergson's prompt/completion columns (see the docstring)."""
    n = 0
    with open(src) as fin, open(dst, "w") as fout:
        for line in fin:
            if not line.strip():
                continue
            row = json.loads(line)
            context = row.get("input") or ""
            user = row["instruction"] if not context.strip() else row["instruction"] + "\n" + context
            fout.write(json.dumps({"prompt": user, "completion": row["output"] + eos}) + "\n")
            n += 1
    return n


def bergson(step: str, args: list, work: Path, env: dict) -> tuple[float, float]:
    """Run one bergson CLI step: (wall seconds, peak RSS in MB). Its stdout and stderr go to
    WORK/STEP.out and .err; on failure, exits with the stderr tail."""
    cmd = [sys.executable, "-m", "bergson", step, *map(str, args)]
    with open(work / f"{step}.out", "w") as out, open(work / f"{step}.err", "w") as err:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        # wait4, not wait: it gives this child's own rusage (max RSS, in KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        tail = (work / f"{step}.err").read_text()[-4000:]
        sys.stderr.write(f"bergson {step} failed (rc {rc}):\n{tail}\n")
        sys.exit(rc if rc > 0 else 1)
    return seconds, usage.ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local HF causal-LM directory")
    p.add_argument("--adapter", required=True, help="saved peft LoRA adapter directory")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--query", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--projection-dim", type=int, default=0,
                   help="bergson --projection_dim (default 0: bergson's default, no projection)")
    a = p.parse_args()

    from transformers import AutoTokenizer  # only for the eos token (see write_rows)

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # A copy of the adapter pointing at --model: bergson loads the base model from
    # base_model_name_or_path, which may name another path or a hub id.
    adapter = work / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    shutil.copytree(a.adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(Path(a.model).resolve())
    (adapter / "adapter_config.json").write_text(json.dumps(config, indent=2))

    eos = AutoTokenizer.from_pretrained(a.model).eos_token
    n_train = write_rows(a.train, work / "train.jsonl", eos)
    write_rows(a.query, work / "query.jsonl", eos)

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_CACHE=str(work / "hf_datasets_cache"))
    # Shared by both steps: score checks that the query was built with the same projection.
    common = ["--model", adapter, "--tokenizer", Path(a.model).resolve(),
              "--prompt_column", "prompt", "--completion_column", "completion",
              "--loss_reduction", "mean", "--projection_dim", a.projection_dim, "--overwrite", "true"]
    build_s, build_mb = bergson("build", [work / "query_index", "--dataset", work / "query.jsonl",
                                "--precision", "fp32", "--aggregation", "mean", *common], work, env)
    score_s, score_mb = bergson("score", [work / "scores", "--dataset", work / "train.jsonl",
                                "--query_path", work / "query_index", "--score", "individual",
                                "--index_cfg.precision", "fp32", "--score_cfg.precision", "fp32",
                                "--unit_normalize", "true", *common], work, env)

    from bergson.data import load_scores

    store = load_scores(work / "scores")
    if len(store) != n_train or store.num_scores != 1 or not store.is_written():
        sys.stderr.write(f"unexpected score store: {len(store)} rows x {store.num_scores}, "
                         f"expected {n_train} x 1, all written\n")
        return 1
    scores = [float(s) for s in store.get(slice(None), 0)]
    print(json.dumps({
        "version": version("bergson"), "build_s": round(build_s, 3), "score_s": round(score_s, 3),
        "peak_rss_mb": round(max(build_mb, score_mb), 1), "projection_dim": a.projection_dim or None,
        "scores": scores,
        "notes": ("bergson build --aggregation mean (query = mean raw gradient), then score "
                  "--unit_normalize: cosine of each row's LoRA gradient with it; adapter via "
                  "--model ADAPTER_DIR (PeftModel.from_pretrained); loss mean over "
                  "completion tokens, completion = output + eos as ours; "
                  + (f"projection_dim {a.projection_dim}" if a.projection_dim else
                     "no projection (bergson's build/score default is projection_dim 0)")
                  + f"; fp32, CPU; times are whole CLI processes (model load included); peak RSS "
                  f"build {build_mb:.0f} MB, score {score_mb:.0f} MB"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
