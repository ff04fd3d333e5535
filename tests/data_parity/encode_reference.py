"""Encodes texts with Hugging Face's GemmaTokenizer built from a given
SentencePiece model (one our C++ trainer wrote), for the synthetic-dataset test.

Usage: encode_reference.py TOKENIZER_MODEL TEXTS_JSON OUT_JSON
TEXTS_JSON is a JSON list of strings; OUT_JSON gets a list of id lists
(no special tokens added; literal special pieces in the text are matched).
The tokenizer is built as in text_reference.py: a folder with the
tokenizer.model and a tokenizer_config.json naming GemmaTokenizer.
"""
import json
import os
import shutil
import sys
import tempfile

from transformers import GemmaTokenizer

from reference_common import GEMMA3_SPECIAL_TOKENS, write_tokenizer_config

model, texts_path, out_path = sys.argv[1:4]
with tempfile.TemporaryDirectory() as d:
    shutil.copy(model, os.path.join(d, "tokenizer.model"))
    write_tokenizer_config(d, GEMMA3_SPECIAL_TOKENS)
    tok = GemmaTokenizer.from_pretrained(d)
    with open(texts_path) as f:
        texts = json.load(f)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
with open(out_path, "w") as f:
    json.dump(ids, f)
