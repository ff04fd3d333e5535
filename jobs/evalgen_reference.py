"""Independent reference for the eval and generate jobs' tests: a tokenizer, a
tiny random Gemma 3 VL model saved by transformers, data files, and what
transformers computes on them.

Usage: evalgen_reference.py OUT_DIR

Writes under OUT_DIR:
  model/            config.json + model.safetensors (HF) + tokenizer.model
  images/*.png      test images
  eval.jsonl        conversations (HF messages shape) for the eval job
  prompts.jsonl     prompts (no model turn) for the generate job
  reference.json    {"eval": {loss_sum, tokens, correct, loss, accuracy},
                     "generate": [{"id", "tokens"}...]} as HF computes them:
    eval: Gemma3ForConditionalGeneration on each conversation (processor ids,
          labels on the model turns' content and <end_of_turn>, HF's shifted
          cross-entropy summed, argmax accuracy on the same targets);
    generate: one left-padded batch through HF generate (greedy, KV cache),
          stopping at <eos> / <end_of_turn>.
"""
import json
import math
import os
import random
import shutil
import sys

import numpy as np
import sentencepiece as spm
import torch
from PIL import Image
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from evalgen_common import MM_TOKENS, eval_sums, make_processor
from evalgen_common import images_of as common_images_of

out = sys.argv[1]
os.makedirs(os.path.join(out, "images"), exist_ok=True)
# 1. Tokenizer (Gemma's specials at 0..9).
random.seed(11)
words = ("the a receipt store total date item price coffee tea milk bread cash change tax "
         "Describe this image please what is shown hello world answer question").split()
lines = [" ".join(random.choice(words) for _ in range(random.randint(2, 12))) +
         (f" {random.randint(0, 9999)}.{random.randint(0, 99):02d}" if random.random() < 0.3 else "")
         for _ in range(2000)]
with open(os.path.join(out, "corpus.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
spm.SentencePieceTrainer.train(
    input=os.path.join(out, "corpus.txt"), model_prefix=os.path.join(out, "tokenizer"), vocab_size=400,
    model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
    add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
    character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
    bos_piece="<bos>", unk_piece="<unk>",
    user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                          "<image_soft_token>", "<s_total>", "</s_total>", "<s_nm>", "</s_nm>"],
    minloglevel=2)
model_dir = os.path.join(out, "model")
os.makedirs(model_dir, exist_ok=True)
shutil.copy(os.path.join(out, "tokenizer.model"), os.path.join(model_dir, "tokenizer.model"))
with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "GemmaTokenizer",
               "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                        "image_token": "<image_soft_token>"}}, f)
tokenizer, processor = make_processor(model_dir)
tid = tokenizer.convert_tokens_to_ids
assert tid("<image_soft_token>") == 9 and tid("<end_of_turn>") == 6
EOS = [1, 6]

# 2. The tiny model.
config = Gemma3Config(
    text_config=dict(vocab_size=416, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                     max_position_embeddings=512, pad_token_id=0, eos_token_id=EOS, bos_token_id=2),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=64, patch_size=8, vision_use_head=False),
    mm_tokens_per_image=MM_TOKENS, image_token_index=9, boi_token_index=7, eoi_token_index=8,
    eos_token_id=EOS, pad_token_id=0)
torch.manual_seed(0)
model = Gemma3ForConditionalGeneration(config)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for name, p in model.named_parameters():  # scales that give varied greedy tokens
        scale = 0.02 if p.dim() == 1 else 0.1 if "embed_tokens" in name else 0.2
        p.copy_(torch.randn(p.shape, generator=g) * scale)
model.eval()
model.save_pretrained(model_dir)

# 3. Images and data.
rng = np.random.default_rng(5)
Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(os.path.join(out, "images/a.png"))
Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(os.path.join(out, "images/b.png"))


def text(t):
    return {"type": "text", "text": t}


def image(p):
    return {"type": "image", "path": p}


eval_convs = [
    [{"role": "user", "content": [image("images/a.png"), text("Describe this image.")]},
     {"role": "assistant", "content": [text("<s_total>12.50</s_total>")]}],
    [{"role": "user", "content": "what is the price of tea"},
     {"role": "assistant", "content": "the price is 3.20"}],
    [{"role": "user", "content": [text("hello")]},
     {"role": "assistant", "content": [text("world")]},
     {"role": "user", "content": [text("and the date please")]},
     {"role": "assistant", "content": [text("the date is 2024 01 31 receipt total 99.00")]}],
    [{"role": "user", "content": [image("images/b.png"), text("what store")]},
     {"role": "assistant", "content": [text("<s_nm>milk bread</s_nm><s_total>4.00</s_total>")]}],
    [{"role": "user", "content": "tax"}, {"role": "assistant", "content": "cash change"}],
]
with open(os.path.join(out, "eval.jsonl"), "w") as f:
    for c in eval_convs:
        f.write(json.dumps({"messages": c}) + "\n")


def images_of(msgs):
    return common_images_of(out, msgs)


loss_sum, tokens, correct = eval_sums(model, processor, tokenizer, eval_convs, out)

ref = {"eval": {"loss_sum": loss_sum, "tokens": tokens, "correct": correct,
                "loss": loss_sum / tokens, "perplexity": math.exp(loss_sum / tokens),
                "accuracy": correct / tokens}}

# 4. Generation: one left-padded batch of different lengths, one with an image.
prompts = [
    ("short", [{"role": "user", "content": "tea"}]),
    ("img", [{"role": "user", "content": [image("images/a.png"), text("Describe this image.")]}]),
    ("long", [{"role": "user", "content": "what is the total price of the coffee and the bread at this store"}]),
]
with open(os.path.join(out, "prompts.jsonl"), "w") as f:
    for pid, msgs in prompts:
        f.write(json.dumps({"id": pid, "messages": msgs}) + "\n")
texts = [processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for _, m in prompts]
tokenizer.padding_side = "left"
# Images for the batch: a list per prompt (empty for the text-only ones).
enc = processor(text=texts, images=[images_of(m) for _, m in prompts], padding=True, return_tensors="pt")
assert enc["attention_mask"].sum(1).unique().numel() == 3, "prompts must differ in length"
MAX_NEW = 12
with torch.no_grad():
    gen = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=EOS, pad_token_id=0)
new = gen[:, enc["input_ids"].shape[1]:].tolist()
rows = []
for (pid, _), row in zip(prompts, new):
    kept = []
    for t in row:
        kept.append(t)
        if t in EOS:
            break
    rows.append({"id": pid, "tokens": kept})
ref["generate"] = rows
ref["generate_max_new_tokens"] = MAX_NEW
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(ref, f, indent=1)
print(json.dumps(ref))
