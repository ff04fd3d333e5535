"""Writes test images and Hugging Face's Gemma 3 image-processor output for them.

Usage: image_reference.py OUT_DIR

The images are generated here (seeded noise and gradients: PNG, JPEG, gray,
RGBA, palette, EXIF-rotated JPEG, odd sizes, up- and downscaling). The
processor is the one `AutoImageProcessor` picks for a Gemma 3 preprocessor
config in this environment (its class is recorded). Output: OUT_DIR/manifest.json
and one raw little-endian float32 file per case holding pixel_values
[1 + num_crops, 3, S, S]; also the torchvision-style result (uint8 antialiased
interpolate, then (x - 127.5) / 127.5) as a second, informational reference.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from transformers import Gemma3ImageProcessorPil
from transformers.image_utils import load_image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1234)


def noise(h, w, c=3):
    return rng.integers(0, 256, size=(h, w, c) if c > 1 else (h, w), dtype=np.uint8)


def gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256], -1)
    return img.astype(np.uint8)


cases = []  # (file name, image size, pan_and_scan)
Image.fromarray(noise(301, 517)).save(f"{out}/noise_up.png"); cases.append(("noise_up.png", 896, False))
Image.fromarray(noise(977, 1283)).save(f"{out}/noise_down.png"); cases.append(("noise_down.png", 896, False))
Image.fromarray(noise(479, 641)).save(f"{out}/noise.jpg", quality=90); cases.append(("noise.jpg", 896, False))
Image.fromarray(gradient(1501, 2003)).save(f"{out}/gradient_down.jpg", quality=85)
cases.append(("gradient_down.jpg", 896, False))
Image.fromarray(noise(1001, 333, 1), mode="L").save(f"{out}/gray.png"); cases.append(("gray.png", 896, False))
Image.fromarray(noise(190, 250, 4), mode="RGBA").save(f"{out}/rgba.png"); cases.append(("rgba.png", 896, False))
Image.fromarray(noise(77, 123)).convert("P", palette=Image.ADAPTIVE, colors=64).save(f"{out}/palette.png")
cases.append(("palette.png", 224, False))
exif_img = Image.fromarray(gradient(200, 300))
exif = exif_img.getexif()
exif[0x0112] = 6  # orientation: rotate 90 CW to display
exif_img.save(f"{out}/exif6.jpg", exif=exif.tobytes(), quality=95); cases.append(("exif6.jpg", 224, False))
Image.fromarray(noise(33, 47)).save(f"{out}/small.bmp"); cases.append(("small.bmp", 224, False))
def write_png16_rgb(path, arr):
    """A 16-bit RGB PNG (PIL cannot write one), written by hand."""
    import struct
    import zlib
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


write_png16_rgb(f"{out}/rgb16.png", rng.integers(0, 65536, size=(51, 38, 3), dtype=np.uint16))
cases.append(("rgb16.png", 224, False))
g16 = rng.integers(0, 65536, size=(45, 70), dtype=np.uint16)
Image.fromarray(g16).save(f"{out}/gray16.png"); cases.append(("gray16.png", 224, False))
Image.fromarray(noise(300, 1200)).save(f"{out}/wide.png"); cases.append(("wide.png", 224, True))
Image.fromarray(noise(901, 300)).save(f"{out}/tall.png"); cases.append(("tall.png", 224, True))
Image.fromarray(noise(380, 400)).save(f"{out}/square.png"); cases.append(("square.png", 224, True))

# AutoImageProcessor's default for Gemma 3 is the torchvision backend
# (Gemma3ImageProcessor) when torchvision is installed; without torchvision (as
# in this virtualenv) AutoImageProcessor itself refuses to load, and the
# processor that works is Gemma3ImageProcessorPil, used here (from_pretrained
# on the same preprocessor_config.json).
cfg_dir = os.path.join(out, "processor")
os.makedirs(cfg_dir, exist_ok=True)
manifest = []
for name, size, pas in cases:
    with open(os.path.join(cfg_dir, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "Gemma3ImageProcessor", "size": {"height": size, "width": size},
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
                   "do_pan_and_scan": pas, "pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                   "pan_and_scan_min_ratio_to_activate": 1.2}, f)
    proc = Gemma3ImageProcessorPil.from_pretrained(cfg_dir)
    image = load_image(os.path.join(out, name))  # applies EXIF orientation
    start = time.perf_counter()
    result = proc(images=[image], return_tensors="np")
    hf_seconds = time.perf_counter() - start
    pv = np.ascontiguousarray(result["pixel_values"], dtype=np.float32)
    num_crops = int(np.asarray(result["num_crops"]).reshape(-1)[0])
    pv.tofile(os.path.join(out, name + ".hf.f32"))
    # torchvision-style reference: the same crops, resized as uint8 tensors.
    rgb = np.asarray(image.convert("RGB"))
    t = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()
    views = [t]
    if num_crops:
        h, w = rgb.shape[:2]
        if w >= h:
            n, cw, ch = num_crops, -(-w // num_crops), h
            views += [t[..., :, i * cw:(i + 1) * cw] for i in range(n)]
        else:
            n, cw, ch = num_crops, w, -(-h // num_crops)
            views += [t[..., i * ch:(i + 1) * ch, :] for i in range(n)]
    tv = torch.cat([torch.nn.functional.interpolate(v, size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False) for v in views])
    tv = (tv.float() - 127.5) / 127.5
    tv.numpy().astype(np.float32).tofile(os.path.join(out, name + ".tv.f32"))
    manifest.append({"file": name, "image_size": size, "pan_and_scan": pas, "num_crops": num_crops,
                     "shape": list(pv.shape), "hf_class": type(proc).__name__,
                     "decoded_size": [image.height, image.width], "hf_seconds": hf_seconds})
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
print(json.dumps([(m["file"], m["hf_class"], m["shape"]) for m in manifest]))
