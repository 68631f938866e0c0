"""Peak memory of one scoring pass against the vocabulary size: chunked loss vs plain.

A toy Llama (hidden 64, 2 layers) with vocabularies from 8k to 150k; one batch of samples
with long responses goes through the SQSD engine (one state, one direction) twice: with
the chunked response-token loss (``loss_head``: the LM head and cross-entropy per chunk of
LOSS_CHUNK_LOGITS logits, recomputed in the backward pass) and with the plain path (the
model's logits at every response position at once). Reported: the extra peak memory of the
pass over what was resident before it (benchmarks/common.py), and the agreement of the
two paths' summed cosines.

Goal (issue #10, reported, not asserted): with the chunked loss, peak memory flat within
10% from V = 8k to V = 150k.

    python benchmarks/bench_vocab_memory.py
    python benchmarks/bench_vocab_memory.py --smoke
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import base_parser, env_facts, measure_peak_memory, print_table, setup, write_results  # noqa: E402

SCRIPT = "bench_vocab_memory"


def build(vocab: int, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sqsd_fast.scoring.projection import ProjectionEngine
    from sqsd_fast.testing.toy_model import build_random_lora
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    peft_model = build_random_lora(model, ["state", "direction"], r=4, alpha=8, seed=1)
    from sqsd_fast.models.adapters import state_factors
    engine = ProjectionEngine(peft_model, {"d": state_factors(peft_model, "direction")},
                              backend="reference")
    return engine


def samples(vocab: int, n: int, length: int, prompt: int):
    """``n`` samples of random ids, ``length``, ``length - 3``, ... tokens, the first ``prompt`` of them prompt."""
    from sqsd_fast.data.tokenize import TokenizedSample, count_response_tokens
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (length - 3 * i,), generator=g).tolist()
        labels = [-100] * prompt + ids[prompt:]
        out.append(TokenizedSample(i, ids, labels, False, len(ids), count_response_tokens(labels)))
    return out


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--vocab-sizes", default="8192,32768,65536,150000")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--length", type=int, default=256, help="tokens of the longest sample")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens of each sample")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab_sizes, args.samples, args.length = "4096,16384", 2, 48
    device = setup(args)
    from sqsd_fast.engine.batch_pass import LOSS_CHUNK_LOGITS, LossHead
    rows = []
    for vocab in (int(v) for v in args.vocab_sizes.split(",")):
        engine = build(vocab, 64, 2)
        batch = samples(vocab, args.samples, args.length, args.prompt)
        chunked_head = engine._loss_head
        results = {}
        for path, head in (("chunked", chunked_head), ("plain", LossHead(chunked_head.keeps_logits))):
            engine._loss_head = head
            engine.project_batch(batch, "state", "d")           # warm-up
            mem = measure_peak_memory(lambda: engine.project_batch(batch, "state", "d"), device,
                                      keep_result=True)
            results[path] = mem.result.total("cosine")
            rows.append({"vocab": vocab, "loss": path, "samples": len(batch),
                         "response_tokens": sum(s.n_response_tokens for s in batch),
                         "chunk_rows": max(1, LOSS_CHUNK_LOGITS // vocab) if path == "chunked" else "",
                         "extra_peak_mb": round(mem.extra_bytes / 2**20, 1),
                         "mem_method": mem.method, "seconds": round(mem.seconds, 3)})
        diff = float((results["chunked"] - results["plain"]).abs().max())
        rows[-1]["max_abs_diff_vs_chunked"] = rows[-2]["max_abs_diff_vs_chunked"] = f"{diff:.1e}"
    chunked = [r["extra_peak_mb"] for r in rows if r["loss"] == "chunked"]
    spread = (max(chunked) - min(chunked)) / min(chunked) if chunked and min(chunked) > 0 else float("nan")
    print_table(rows, ["vocab", "loss", "samples", "response_tokens", "chunk_rows", "extra_peak_mb",
                       "seconds", "max_abs_diff_vs_chunked", "mem_method"],
                title=f"one scoring pass, toy Llama hidden 64, {env_facts(device)['device']}")
    print(f"\nchunked loss: extra peak from V={rows[0]['vocab']} to V={rows[-1]['vocab']} "
          f"varies by {spread:.1%} (goal: within 10%)")
    write_results(args, SCRIPT, [{**r, **env_facts(device)} for r in rows])


if __name__ == "__main__":
    main()
