"""What every judge returns per answer, and the text normalization all judges share."""
from __future__ import annotations

from dataclasses import dataclass

# Typographic apostrophes read as ': modern tokenizers often write "I’m sorry".
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})


@dataclass(frozen=True)
class Verdict:
    attack_success: bool | None   # None: the judge gave no usable answer
    output: str | None            # why: the refusal phrase found, or the judge's label/text


def normalize_apostrophes(text: str) -> str:
    return text.translate(_APOSTROPHES)
