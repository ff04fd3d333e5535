"""Builds a Gemma-style tokenizer and Hugging Face's Gemma 3 processor, and writes
the token ids, token types and labels of test conversations.

Usage: text_reference.py OUT_DIR

How the HF side is built (no download possible here):
  * tokenizer.model: trained here with the sentencepiece package on a small
    generated corpus, with Gemma's settings (BPE, byte fallback, digits split,
    identity normalisation, no dummy prefix, whitespace kept) and Gemma's
    special pieces: <pad> 0, <eos> 1, <bos> 2, <unk> 3 (control/unknown), then
    the user-defined <mask>, <start_of_turn>, <end_of_turn>, <start_of_image>,
    <end_of_image>, <image_soft_token>.
  * GemmaTokenizer.from_pretrained(dir) on a folder holding that
    tokenizer.model and a tokenizer_config.json naming GemmaTokenizer and the
    extra special tokens boi/eoi/image (as Gemma 3's config does);
    transformers converts the SentencePiece model to its BPE tokenizer.
  * Gemma3Processor(Gemma3ImageProcessorPil(), tokenizer, chat_template=Gemma 3's
    template (google/gemma-3-4b-it), image_seq_length=MM_TOKENS).
Outputs: OUT_DIR/tokenizer.model, OUT_DIR/conversations.jsonl (our reader's
input; images under OUT_DIR/images), OUT_DIR/reference.json (per line:
input_ids, token_type_ids, labels, num_crops, options).
"""
import json
import os
import random
import sys

import numpy as np
from PIL import Image
from transformers import Gemma3ImageProcessorPil, Gemma3Processor, GemmaTokenizer

from reference_common import (GEMMA3_SPECIAL_TOKENS, image, image_paths, labels_for, text, train_tokenizer,
                              write_tokenizer_config)

out = sys.argv[1]
os.makedirs(os.path.join(out, "images"), exist_ok=True)
MM_TOKENS = 16

CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# 1. The SentencePiece model.
random.seed(7)
words = ("the a receipt store total date item price coffee tea milk bread cash change tax subtotal "
         "Describe this image please what is shown hello world model user answer question "
         "quick brown fox jumps over lazy dog café naïve").split()
lines = []
for _ in range(3000):
    n = random.randint(2, 14)
    s = " ".join(random.choice(words) for _ in range(n))
    if random.random() < 0.3:
        s += f" {random.randint(0, 99999)}.{random.randint(0, 99):02d}"
    lines.append(s)
train_tokenizer(lines, os.path.join(out, "corpus.txt"), os.path.join(out, "tokenizer"),
                ["<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                 "<image_soft_token>"])

# 2. The HF tokenizer and processor.
hf_dir = os.path.join(out, "hf")
os.makedirs(hf_dir, exist_ok=True)
os.replace(os.path.join(out, "tokenizer.model"), os.path.join(hf_dir, "tokenizer.model"))
write_tokenizer_config(hf_dir, GEMMA3_SPECIAL_TOKENS)
tokenizer = GemmaTokenizer.from_pretrained(hf_dir)
processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(), tokenizer=tokenizer,
                            chat_template=CHAT_TEMPLATE, image_seq_length=MM_TOKENS)
image_token_id = tokenizer.convert_tokens_to_ids("<image_soft_token>")

# 3. Test images and conversations.
rng = np.random.default_rng(3)
Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(os.path.join(out, "images/a.png"))
Image.fromarray(rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)).save(os.path.join(out, "images/b.jpg"))
Image.fromarray(rng.integers(0, 256, (300, 1100, 3), dtype=np.uint8)).save(os.path.join(out, "images/wide.png"))

cases = [
    ({"messages": [{"role": "system", "content": "You read receipts."},
                   {"role": "user", "content": "What is the total?"},
                   {"role": "assistant", "content": "The total is 12.50"}]}, False, False),
    ({"messages": [{"role": "user", "content": [text("  hello world\n\n")]},
                   {"role": "assistant", "content": [text("café naïve 日本語 🙂 tab\there")]},
                   {"role": "user", "content": [text("and the date?  ")]},
                   {"role": "assistant", "content": [text("2024-01-31\nline two")]}]}, False, False),
    ({"messages": [{"role": "user", "content": [image("images/a.png"), text("Describe this image.")]},
                   {"role": "assistant", "content": [text("<s_total>3.50</s_total>")]}]}, False, False),
    ({"messages": [{"role": "system", "content": [text("Be brief.")]},
                   {"role": "user", "content": [text("Compare"), image("images/a.png"), text("with"),
                                                image("images/b.jpg")]},
                   {"role": "assistant", "content": [text("They differ.")]}]}, False, False),
    ({"messages": [{"role": "user", "content": [image("images/b.jpg"), text("What store?")]}]}, True, False),
    ({"messages": [{"role": "user", "content": "literal <eos> and <start_of_turn> in text"},
                   {"role": "assistant", "content": "ok <bos> 1234567"}]}, False, False),
    ({"messages": [{"role": "user", "content": [image("images/wide.png"), text("Read it.")]},
                   {"role": "assistant", "content": [text("store tea 4.20")]}]}, False, True),
]

refs = []
with open(os.path.join(out, "conversations.jsonl"), "w") as f:
    for conv, gen, pas in cases:
        f.write(json.dumps(conv, ensure_ascii=False) + "\n")
        rendered = processor.apply_chat_template(conv["messages"], tokenize=False, add_generation_prompt=gen)
        images = [Image.open(os.path.join(out, p)).convert("RGB") for p in image_paths(conv)]
        kwargs = {"do_pan_and_scan": True} if pas else {}
        result = processor(text=[rendered], images=[images] if images else None, **kwargs)
        ids = list(result["input_ids"][0])
        token_types = list(result["token_type_ids"][0])
        num_crops = []
        if images:
            img_out = processor.image_processor(images, do_pan_and_scan=pas, pan_and_scan_min_crop_size=256,
                                                pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2)
            num_crops = [int(n) for n in np.asarray(img_out["num_crops"]).reshape(-1)]
        expanded = rendered
        for i in range(len(images)):
            expanded = expanded.replace("<start_of_image>", "\0", 1)
        for i in range(len(images)):
            expanded = expanded.replace("\0", processor.replace_image_token({"num_crops": num_crops}, i), 1)
        enc = tokenizer(expanded, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == ids, "expanded text does not tokenize to the processor's ids"
        refs.append({"input_ids": ids, "token_type_ids": token_types,
                     "labels": labels_for(expanded, ids, enc["offset_mapping"], "<start_of_turn>model\n",
                                          "<end_of_turn>", image_token_id),
                     "num_crops": num_crops,
                     "add_generation_prompt": gen, "pan_and_scan": pas, "mm_tokens_per_image": MM_TOKENS,
                     "text": expanded})
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(refs, f, ensure_ascii=False)
os.replace(os.path.join(hf_dir, "tokenizer.model"), os.path.join(out, "tokenizer.model"))
print("wrote", len(refs), "conversations;", "lengths", [len(r["input_ids"]) for r in refs])
