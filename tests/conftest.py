"""Shared fixtures: tiny tokenizers and models, built offline in milliseconds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
from transformers.utils import logging as hf_logging

from compodistill.checkpoints import word_tokenizer

hf_logging.disable_progress_bar()

WORDS = "what colour shape is the red green blue circle square left right of above below ? .".split()


@pytest.fixture
def tok():
    "A fresh word-level tokenizer with `<image>` and the chat template."
    return word_tokenizer(WORDS)
