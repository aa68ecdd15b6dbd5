"""Prompt-complexity token counts in the parent process: the model's own tokenizer, without transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TEXTS = [
    "What should BRICS do about a common currency?",
    "  Leading spaces, UPPER case, digits 12345 and punctuation: (a) [b] {c}!",
    "Non-ASCII: café, naïve, 東京, émigré — and an em dash.",
    "",
]


def test_counts_match_the_transformers_tokenizer_and_need_no_transformers(tiny_model_dir: Path) -> None:
    code = f"""
import json, sys
from runner.run.tokens import token_counter
from runner.spec import Model
count = token_counter({{"tiny": Model(backend="transformers", name={str(tiny_model_dir)!r})}})("tiny")
print(json.dumps({{"counts": [count(t) for t in {TEXTS!r}], "transformers": "transformers" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    fast = json.loads(done.stdout)
    assert fast["transformers"] is False
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert fast["counts"] == [len(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    assert fast["counts"][0] > 0
