"""Fast implementations of ``factor_grad_stats``; each module follows docs/CONTRACTS.md."""
