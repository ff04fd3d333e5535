"""What the evalgen reference scripts share: the HF Gemma 3 processor built on
the fixture's tokenizer, and teacher-forced loss sums as transformers computes
them (labels on the model turns' content and their <end_of_turn>)."""
import os

import torch
from PIL import Image
from transformers import Gemma3ImageProcessorPil, Gemma3Processor, GemmaTokenizer

MM_TOKENS = 16
IMAGE_SIZE = 64
END_OF_TURN = 6

CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- for message in messages -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' }}\n"
    "    {%- if message['content'] is string -%}{{ message['content'] | trim }}\n"
    "    {%- else -%}{%- for item in message['content'] -%}\n"
    "        {%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}\n"
    "    {%- endfor -%}{%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}\n")



def make_processor(model_dir):
    """GemmaTokenizer from model_dir (tokenizer.model + tokenizer_config.json) and
    Gemma3Processor with Gemma 3's chat template."""
    tokenizer = GemmaTokenizer.from_pretrained(model_dir)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE, image_seq_length=MM_TOKENS)
    return tokenizer, processor


def images_of(root, msgs):
    return [Image.open(os.path.join(root, p["path"])).convert("RGB") for m in msgs
            if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image"]


def eval_sums(model, processor, tokenizer, convs, root):
    """(sum of -log p, target tokens, argmax hits) over conversations, one at a time."""
    tid = tokenizer.convert_tokens_to_ids
    loss_sum, tokens, correct = 0.0, 0, 0
    for conv in convs:
        rendered = processor.apply_chat_template(conv, tokenize=False)
        imgs = images_of(root, conv)
        enc = processor(text=[rendered], images=[imgs] if imgs else None, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        # Labels: tokens after each "<start_of_turn>model\n" up to and including <end_of_turn>.
        labels, inside, i = [-100] * len(ids), False, 0
        sot, model_ids = tid("<start_of_turn>"), tokenizer.encode("model\n", add_special_tokens=False)
        while i < len(ids):
            if ids[i] == sot and ids[i + 1:i + 1 + len(model_ids)] == model_ids:
                i += 1 + len(model_ids)
                while i < len(ids):
                    labels[i] = ids[i]
                    if ids[i] == END_OF_TURN:
                        break
                    i += 1
            i += 1
        with torch.no_grad():
            logits = model(**enc).logits[0].float()
        lab = torch.tensor(labels)
        shift_logits, shift_labels = logits[:-1], lab[1:]
        keep = shift_labels != -100
        ce = torch.nn.functional.cross_entropy(shift_logits[keep], shift_labels[keep], reduction="sum")
        loss_sum += ce.item()
        tokens += int(keep.sum())
        correct += int((shift_logits[keep].argmax(-1) == shift_labels[keep]).sum())
        # HF's own loss (mean) as a cross-check of the sum above.
        with torch.no_grad():
            hf_loss = model(**enc, labels=lab.unsqueeze(0)).loss.item()
        assert abs(hf_loss - ce.item() / int(keep.sum())) < 1e-4, (hf_loss, ce.item())
    return loss_sum, tokens, correct
