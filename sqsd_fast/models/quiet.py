"""Quiet loading: transformers' and peft's progress bars and deprecation chatter silenced
while a model loads, so the user sees this tool's progress bar and summary. Used by every
command that loads a model (scoring, baselines, training, evaluation)."""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager


@contextmanager
def quiet_libraries():
    """Silence loading progress bars and deprecation chatter from transformers/peft, so
    the user sees our progress bar and summary; restores the previous settings."""

    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # bitsandbytes' CPU backend, imported by transformers when installed, logs a warning
    # about an optional kernels package it did not find: not something to act on.
    bnb_logger = logging.getLogger("bitsandbytes")
    bnb_level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        bnb_logger.setLevel(bnb_level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
