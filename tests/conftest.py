"""Test session setup shared by every test file."""

import os

import torch

# Triton reads TRITON_INTERPRET when a @triton.jit function is defined, so it must be set
# before anything imports sqsd_fast. Without a GPU the Triton backend runs on CPU tensors
# under the interpreter (slow: its tests keep shapes small).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
