#!/usr/bin/env python3
"""Writes a tiny random Gemma 3 VL model as a Hugging Face folder, for demos.

Nothing can be downloaded here, so the quickstart makes its own model: the real
architecture (SigLIP tower, projector, Gemma 3 decoder with sliding and global
layers) at toy sizes, every parameter random from --seed.

  python deploy/make_tiny_model.py --out /tmp/tiny-gemma3 [--seed 0]
  python deploy/make_tiny_model.py --out DIR --tokenizer ocr/tokenizer.model --image-size 64

With --tokenizer (a SentencePiece model such as `gemmactl data synth` trains),
the vocabulary and the special ids (pad, bos, eos, <start_of_image>,
<end_of_image>, <image_soft_token>) come from it and it is copied beside the
model, so jobs can train the model on that data.
"""
import argparse
import shutil

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (config.json + model.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", help="SentencePiece tokenizer.model to size the model for")
    ap.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--hidden", type=int, default=64, help="decoder hidden size")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers")
    ap.add_argument("--sliding-window", type=int, default=16, help="sliding attention window")
    ap.add_argument("--vision-layers", type=int, default=2, help="SigLIP layers")
    ap.add_argument("--patch-size", type=int, default=8, help="SigLIP patch side in pixels")
    ap.add_argument("--mm-tokens", type=int, default=16,
                    help="image soft tokens (the patches average-pooled to this many)")
    ap.add_argument("--std", type=float, default=0.1, help="weight init standard deviation")
    args = ap.parse_args()
    ids = dict(vocab_size=512, pad=0, bos=2, eos=1, boi=498, eoi=499, image=500)
    if args.tokenizer:
        import sentencepiece
        sp = sentencepiece.SentencePieceProcessor(model_file=args.tokenizer)
        def piece(name):
            i = sp.piece_to_id(name)
            if i == sp.unk_id() and name != sp.id_to_piece(sp.unk_id()):
                raise SystemExit(f"{args.tokenizer}: no piece {name}")
            return i
        ids = dict(vocab_size=sp.get_piece_size(), pad=piece("<pad>"), bos=piece("<bos>"),
                   eos=piece("<eos>"), boi=piece("<start_of_image>"), eoi=piece("<end_of_image>"),
                   image=piece("<image_soft_token>"))
    config = Gemma3Config(
        text_config=dict(vocab_size=ids["vocab_size"], hidden_size=args.hidden,
                         intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         query_pre_attn_scalar=16,  # 1 / sqrt(head_dim), as Gemma 3 has it
                         sliding_window=args.sliding_window, max_position_embeddings=2048,
                         pad_token_id=ids["pad"], bos_token_id=ids["bos"],
                         eos_token_id=ids["eos"]),
        vision_config=dict(hidden_size=32, intermediate_size=64,
                           num_hidden_layers=args.vision_layers, num_attention_heads=2,
                           image_size=args.image_size, patch_size=args.patch_size,
                           vision_use_head=False),
        mm_tokens_per_image=args.mm_tokens, image_token_index=ids["image"], boi_token_index=ids["boi"],
        eoi_token_index=ids["eoi"])
    torch.manual_seed(args.seed)
    model = Gemma3ForConditionalGeneration(config)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if args.tokenizer and "vision_tower" in name and "norm" in name:
                # SigLIP's LayerNorms scale by w (at 0 the tower would start blind)
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif args.tokenizer and "norm" in name:
                p.zero_()  # a trainable start: Gemma's norms at 1 + 0
            else:  # HF zero-inits some; make every one random
                p.copy_(torch.randn(p.shape, generator=g) * args.std)
    model.save_pretrained(args.out)
    if args.tokenizer:
        shutil.copy(args.tokenizer, f"{args.out}/tokenizer.model")
    n = sum(p.numel() for p in model.parameters())
    print(f"tiny Gemma 3 VL ({n / 1e6:.2f} M parameters) written to {args.out}")


if __name__ == "__main__":
    main()
