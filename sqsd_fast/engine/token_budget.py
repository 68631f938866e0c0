"""The default token budget of a scoring pass (``--max-tokens`` when it is not given).

A budget counted in tokens, padding included, bounds what a forward + backward keeps
alive: activations grow with the tokens of the batch, and the response-token logits with
tokens x vocabulary. A sample count cannot do that once lengths vary.

CPU: a constant, measured (benchmarks/bench_token_budget.py, results in
results/token_budget_smollm2.jsonl): SmolLM2 fp32 scoring 32 Alpaca samples
peaked at 1.68 GB RSS at batch size 1, 5.35 GB at batch size 8, 2.43 GB at 512 tokens and
3.48 GB at 1024 tokens. 512 keeps peak memory within 1.5x of one sample at a time, and on
the CPU larger batches are not faster (issue #10's table: batch 4 50.7 s, batch 8 69.8 s).
GPU: a share of the free memory after the model is loaded, divided by an estimate of the
bytes one token costs (activations per layer after Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models": about 34 x hidden bytes per token
and layer in 16-bit, plus the float32 logits, their softmax and gradient over the
vocabulary). The estimate is not measured on a GPU yet; pass --max-tokens to override it.
"""
from __future__ import annotations

import torch

CPU_MAX_TOKENS = 512
GPU_FREE_MEMORY_SHARE = 0.6      # the rest: allocator slack, kernels' workspaces, the CUDA context
GPU_MIN_TOKENS, GPU_MAX_TOKENS = 512, 131072


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """Estimated bytes a token costs in one forward + backward of a causal LM."""
    hidden = int(getattr(config, "hidden_size", 4096))
    layers = int(getattr(config, "num_hidden_layers", 32))
    vocab = int(getattr(config, "vocab_size", 32000))
    element = torch.tensor([], dtype=dtype).element_size()
    activations = 34 * hidden * layers * element // 2     # 34 bytes per hidden unit at 16 bit
    logits = 3 * 4 * vocab                                # float32 logits, softmax, gradient
    return activations + logits


def default_max_tokens(model, device) -> int:
    """``CPU_MAX_TOKENS`` on a CPU; on a GPU, what fits in a share of its free memory."""
    device = torch.device(device)
    if device.type != "cuda" or model is None:
        return CPU_MAX_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    dtype = next(model.parameters()).dtype
    budget = int(free * GPU_FREE_MEMORY_SHARE) // bytes_per_token(model.config, dtype)
    return max(GPU_MIN_TOKENS, min(GPU_MAX_TOKENS, budget))


def resolve_max_tokens(max_tokens: int | None, model, device, samples) -> int:
    """The budget a run uses: the one given, else the device's default raised to the
    longest sample (so that a default never refuses a sample; a given budget does)."""
    if max_tokens is not None:
        return max_tokens
    longest = max((s.n_tokens for s in samples), default=1)
    return max(default_max_tokens(model, device), longest)
