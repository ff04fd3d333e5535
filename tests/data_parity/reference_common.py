"""What the data parity reference scripts share: a Gemma-style SentencePiece
model trained here, the tokenizer_config.json HF's GemmaTokenizer reads, the
conversation helpers, and the labels HF's chat format implies. Only
sentencepiece and the standard library: the HF side stays in each script."""
import json
import os

import sentencepiece as spm

# The extra special tokens of Gemma 3's tokenizer config (boi/eoi/image).
GEMMA3_SPECIAL_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                         "image_token": "<image_soft_token>"}


def train_tokenizer(lines, corpus_path, model_prefix, user_defined_symbols, vocab_size=600):
    """Writes lines to corpus_path and trains MODEL_PREFIX.model on them with
    Gemma's settings (BPE, byte fallback, digits split, identity normalisation,
    no dummy prefix, whitespace kept): <pad> 0, <eos> 1, <bos> 2, <unk> 3, then
    user_defined_symbols."""
    with open(corpus_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus_path, model_prefix=model_prefix, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=user_defined_symbols, minloglevel=2)


def write_tokenizer_config(folder, extra_special_tokens, **settings):
    """folder/tokenizer_config.json naming GemmaTokenizer, with `settings` (e.g.
    add_bos_token) and the extra special tokens."""
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GemmaTokenizer", **settings,
                   "extra_special_tokens": extra_special_tokens}, f)


def text(t):
    return {"type": "text", "text": t}


def image(p):
    return {"type": "image", "path": p}


def image_paths(conv):
    """The image paths of a {"messages": [...]} conversation, in order."""
    return [p["path"] for m in conv["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p["type"] == "image"]


def labels_for(expanded, ids, offsets, head, end_tag, image_token_id):
    """Labels: ids on tokens starting inside a model turn's content (after
    `head`) or its closing `end_tag`, -100 elsewhere and on image tokens.
    offsets: each token's (begin, end) in `expanded`."""
    spans = []
    pos = expanded.find(head)
    while pos >= 0:
        start = pos + len(head)
        stop = expanded.find(end_tag, start)
        if stop >= 0:
            spans.append((start, stop + len(end_tag)))
        pos = expanded.find(head, start)
    return [tid if any(s <= b < e for s, e in spans) and tid != image_token_id else -100
            for tid, (b, _) in zip(ids, offsets)]
