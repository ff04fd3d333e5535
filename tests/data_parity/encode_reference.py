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

model, texts_path, out_path = sys.argv[1:4]
with tempfile.TemporaryDirectory() as d:
    shutil.copy(model, os.path.join(d, "tokenizer.model"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GemmaTokenizer",
                   "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                            "image_token": "<image_soft_token>"}}, f)
    tok = GemmaTokenizer.from_pretrained(d)
    with open(texts_path) as f:
        texts = json.load(f)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
with open(out_path, "w") as f:
    json.dump(ids, f)
