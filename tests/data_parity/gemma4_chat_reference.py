"""Builds a tiny Gemma 4 tokenizer and Hugging Face's Gemma4Processor, and writes
the token ids, mm token types, labels, pixel values and patch positions of test
conversations, one by one and as one batch.

Usage: gemma4_chat_reference.py OUT_DIR

How the HF side is built (no download possible here):
  * tokenizer.model: trained here with the sentencepiece package (Gemma's
    settings, as text_reference.py) with <pad> 0, <eos> 1, <bos> 2, <unk> 3 and
    Gemma 4's pieces as user-defined symbols (<|turn>, <turn|>, <|image>,
    <|image|>, <image|>, the audio/video/channel pieces).
  * GemmaTokenizer.from_pretrained(dir): a tokenizer_config.json naming
    GemmaTokenizer, add_bos_token false (as Gemma 4's), and the extra special
    tokens Gemma4Processor reads (image/boi/eoi and audio/boa/eoa).
  * Gemma4Processor(Gemma4AudioFeatureExtractor(),
    Gemma4ImageProcessorPil(max_soft_tokens=BUDGET), tokenizer,
    NoVideoProcessor(), chat_template=CHAT_TEMPLATE); the video processor is an
    empty stand-in (Gemma4VideoProcessor needs torchvision; no video here). processing_gemma4 imports the torchvision
    image processor module, and torchvision is not installed here: that module
    is aliased to the PIL one, which defines the same two names it imports
    (get_aspect_ratio_preserving_size, Gemma4ImageProcessorKwargs).
  * CHAT_TEMPLATE: the message part of google/gemma-4-*-it's
    chat_template.jinja, rewritten here (no tools, no thinking switch): <bos>, a
    first system/developer message as its own `<|turn>system` turn,
    "assistant" shown as "model", user text trimmed, model text with
    `<|channel>...<channel|>` thoughts stripped then trimmed, an image item
    rendered as "\\n\\n<|image|>\\n\\n", `<turn|>\\n` after each turn, and the
    generation prompt `<|turn>model\\n<|channel>thought\\n<channel|>`. Each
    rendering is also checked against the format written out by hand
    (expected_render below).
Outputs: OUT_DIR/tokenizer.model, OUT_DIR/conversations.jsonl (images under
OUT_DIR/images), OUT_DIR/reference.json (per conversation: text, input_ids,
mm_token_type_ids, labels, num_soft_tokens, options; and "batch": the same
conversations through one processor call) and raw little-endian arrays:
conv{i}.pixel_values.f32 [N, P, 768], conv{i}.positions.i64 [N, P, 2],
batch.pixel_values.f32, batch.positions.i64.
"""
import json
import os
import sys

import numpy as np
from PIL import Image

import transformers.models.gemma4.image_processing_pil_gemma4 as pil_gemma4

sys.modules["transformers.models.gemma4.image_processing_gemma4"] = pil_gemma4  # no torchvision here
import transformers  # noqa: E402
from transformers import GemmaTokenizer  # noqa: E402
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor  # noqa: E402
from transformers.models.gemma4.processing_gemma4 import Gemma4Processor  # noqa: E402

from reference_common import (image, image_paths, labels_for, text, train_tokenizer,  # noqa: E402
                              write_tokenizer_config)


class NoVideoProcessor(transformers.BaseVideoProcessor):
    """Gemma4VideoProcessor needs torchvision; no video is passed here. (Without
    torchvision, transformers.BaseVideoProcessor is the placeholder class the
    processor checks its argument against.)"""

    def __init__(self):  # noqa: D107 - nothing to set up
        pass


out = sys.argv[1]
os.makedirs(os.path.join(out, "images"), exist_ok=True)
BUDGET = 70  # max_soft_tokens: 630 patches per image

GEMMA4_PIECES = ["<mask>", "<|turn>", "<turn|>", "<|image>", "<|image|>", "<image|>", "<|audio>", "<|audio|>",
                 "<audio|>", "<|video|>", "<|channel>", "<channel|>", "<|think|>"]

CHAT_TEMPLATE = r"""{%- macro without_thoughts(text) -%}
{%- set acc = namespace(s='') -%}
{%- for piece in text.split('<channel|>') -%}
{%- set acc.s = acc.s + (piece.split('<|channel>')[0] if '<|channel>' in piece else piece) -%}
{%- endfor -%}
{{- acc.s | trim -}}
{%- endmacro -%}
{{- bos_token -}}
{%- set rest = messages -%}
{%- if messages[0]['role'] in ['system', 'developer'] -%}
{{- '<|turn>system\n' + (messages[0]['content'] | trim) + '<turn|>\n' -}}
{%- set rest = messages[1:] -%}
{%- endif -%}
{%- for m in rest -%}
{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}
{{- '<|turn>' + role + '\n' -}}
{%- if m['content'] is string -%}
{{- without_thoughts(m['content']) if role == 'model' else (m['content'] | trim) -}}
{%- else -%}
{%- for part in m['content'] -%}
{%- if part['type'] == 'text' -%}
{{- without_thoughts(part['text']) if role == 'model' else (part['text'] | trim) -}}
{%- elif part['type'] == 'image' -%}
{{- '\n\n<|image|>\n\n' -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\n<|channel>thought\n<channel|>' -}}
{%- endif -%}
"""


def strip_thoughts(text):
    kept = []
    for piece in text.split("<channel|>"):
        kept.append(piece.split("<|channel>")[0] if "<|channel>" in piece else piece)
    return "".join(kept).strip()


def expected_render(messages, add_generation_prompt):
    """The Gemma 4 chat format spelled out without Jinja."""
    s = "<bos>"
    if messages[0]["role"] == "system":
        s += "<|turn>system\n" + messages[0]["content"].strip() + "<turn|>\n"
        messages = messages[1:]
    for m in messages:
        model = m["role"] == "assistant"
        s += "<|turn>" + ("model" if model else m["role"]) + "\n"
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        for p in parts:
            if p["type"] == "text":
                s += strip_thoughts(p["text"]) if model else p["text"].strip()
            else:
                s += "\n\n<|image|>\n\n"
        s += "<turn|>\n"
    if add_generation_prompt:
        s += "<|turn>model\n<|channel>thought\n<channel|>"
    return s


# 1. The SentencePiece model.
rng = np.random.default_rng(11)
words = ("the a receipt store total date item price coffee tea milk bread cash change tax subtotal "
         "Describe this image please what is shown hello world model user answer question "
         "quick brown fox jumps over lazy dog café naïve wide tall photo left right").split()
lines = []
for _ in range(3000):
    s = " ".join(rng.choice(words, size=int(rng.integers(2, 15))))
    if rng.random() < 0.3:
        s += f" {int(rng.integers(0, 99999))}.{int(rng.integers(0, 99)):02d}"
    lines.append(s)
hf_dir = os.path.join(out, "hf")
os.makedirs(hf_dir, exist_ok=True)
train_tokenizer(lines, os.path.join(out, "corpus.txt"), os.path.join(hf_dir, "tokenizer"), GEMMA4_PIECES)

# 2. The HF tokenizer and processor.
write_tokenizer_config(hf_dir, {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                                "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"},
                       add_bos_token=False, add_eos_token=False)
tokenizer = GemmaTokenizer.from_pretrained(hf_dir)
processor = Gemma4Processor(Gemma4AudioFeatureExtractor(), pil_gemma4.Gemma4ImageProcessorPil(max_soft_tokens=BUDGET),
                            tokenizer, NoVideoProcessor(), chat_template=CHAT_TEMPLATE)
image_token_id = tokenizer.convert_tokens_to_ids("<|image|>")
assert image_token_id == processor.image_token_id

# 3. Test images (non-square, different aspect ratios; up- and downscaled).
Image.fromarray(rng.integers(0, 256, (300, 1100, 3), dtype=np.uint8)).save(os.path.join(out, "images/wide.png"))
Image.fromarray(rng.integers(0, 256, (480, 360, 3), dtype=np.uint8)).save(os.path.join(out, "images/tall.jpg"),
                                                                          quality=92)
Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(os.path.join(out, "images/small.png"))

cases = [  # (conversation, add_generation_prompt)
    ({"messages": [{"role": "system", "content": "  You read receipts.\n"},
                   {"role": "user", "content": "What is the total?"},
                   {"role": "assistant", "content": "The total is 12.50"}]}, False),
    ({"messages": [{"role": "user", "content": [text("  hello world\n\n")]},
                   {"role": "assistant", "content": [text("café naïve 日本語 🙂 tab\there")]},
                   {"role": "user", "content": [text("and the date?  ")]},
                   {"role": "assistant", "content": [text("<|channel>thought\nlook at the top<channel|>2024-01-31\n"
                                                          "line two")]}]}, False),
    ({"messages": [{"role": "system", "content": [text("Be brief.")]},
                   {"role": "user", "content": [text("Compare"), image("images/wide.png"), text("with"),
                                                image("images/tall.jpg")]},
                   {"role": "assistant", "content": [text("The left one is wide.")]}]}, False),
    ({"messages": [{"role": "user", "content": [image("images/small.png")]},
                   {"role": "assistant", "content": [text("A small photo.")]},
                   {"role": "user", "content": [text("And this?"), image("images/tall.jpg")]},
                   {"role": "assistant", "content": "tall photo 4.20"}]}, False),
    ({"messages": [{"role": "user", "content": [image("images/wide.png"), text("What store?")]}]}, True),
    ({"messages": [{"role": "user", "content": "literal <eos> and <|turn> in text"},
                   {"role": "assistant", "content": "ok <bos> 1234567"}]}, False),
]


def hf_messages(messages):
    """System content as a string (the template trims it as one)."""
    outm = []
    for m in messages:
        if m["role"] == "system" and isinstance(m["content"], list):
            m = {"role": "system", "content": "".join(p["text"] for p in m["content"])}
        outm.append(m)
    return outm


def save(name, arr, dtype):
    np.ascontiguousarray(arr, dtype=dtype).tofile(os.path.join(out, name))


refs = []
texts, batch_images = [], []
with open(os.path.join(out, "conversations.jsonl"), "w") as f:
    for i, (conv, gen) in enumerate(cases):
        f.write(json.dumps(conv, ensure_ascii=False) + "\n")
        messages = hf_messages(conv["messages"])
        rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        want = expected_render(messages, gen)
        assert rendered == want, f"template vs format, case {i}:\n{rendered!r}\n{want!r}"
        images = [Image.open(os.path.join(out, p)).convert("RGB") for p in image_paths(conv)]
        result = processor(text=[rendered], images=[images] if images else None, return_tensors="np")
        ids = [int(t) for t in result["input_ids"][0]]
        types = [int(t) for t in result["mm_token_type_ids"][0]]
        assert set(result["attention_mask"][0].tolist()) == {1}
        soft = []
        expanded = rendered
        if images:
            img_out = processor.image_processor(images, return_tensors="np")
            soft = [int(n) for n in img_out["num_soft_tokens_per_image"]]
            np.testing.assert_array_equal(img_out["pixel_values"], result["pixel_values"])
            save(f"conv{i}.pixel_values.f32", result["pixel_values"], np.float32)
            save(f"conv{i}.positions.i64", result["image_position_ids"], np.int64)
            pieces = expanded.split("<|image|>")
            expanded = pieces[0] + "".join(f"<|image>{'<|image|>' * n}<image|>" + rest
                                           for n, rest in zip(soft, pieces[1:]))
        enc = tokenizer(expanded, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == ids, f"expanded text does not tokenize to the processor's ids, case {i}"
        assert types == [1 if t == image_token_id else 0 for t in ids]
        refs.append({"text": expanded, "input_ids": ids, "mm_token_type_ids": types,
                     "labels": labels_for(expanded, ids, enc["offset_mapping"], "<|turn>model\n", "<turn|>",
                                          image_token_id),
                     "num_soft_tokens": soft,
                     "add_generation_prompt": gen, "max_soft_tokens": BUDGET,
                     "pixel_shape": list(result["pixel_values"].shape) if images else []})
        texts.append(rendered)
        batch_images.append(images)

# 4. All training conversations (no generation prompt) through one call, as a
# batch: images batch-major, every one padded to max_patches.
train = [i for i, (_, gen) in enumerate(cases) if not gen]
batch = processor(text=[texts[i] for i in train], images=[batch_images[i] for i in train], return_tensors="np",
                  padding=True)
save("batch.pixel_values.f32", batch["pixel_values"], np.float32)
save("batch.positions.i64", batch["image_position_ids"], np.int64)
batch_ref = {"rows": train, "pixel_shape": list(batch["pixel_values"].shape),
             "input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist(),
             "mm_token_type_ids": np.asarray(batch["mm_token_type_ids"]).tolist(),
             "padding_side": tokenizer.padding_side, "pad_id": tokenizer.pad_token_id}
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump({"conversations": refs, "batch": batch_ref}, f, ensure_ascii=False)
os.replace(os.path.join(hf_dir, "tokenizer.model"), os.path.join(out, "tokenizer.model"))
print("wrote", len(refs), "conversations; lengths", [len(r["input_ids"]) for r in refs], "soft tokens",
      [r["num_soft_tokens"] for r in refs], "batch pixels", batch_ref["pixel_shape"])
