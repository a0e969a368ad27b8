"""Helpers of the image-text data tests: tiny images, TSV pairs and WebDataset shards."""
import base64
import io
import json
import os

import numpy as np
from PIL import Image


def tiny_image(seed, width=48, height=32, fmt="PNG"):
    """Encoded bytes of a random RGB image."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def make_samples(count, start=0, captions_per_sample=2):
    """(key, image bytes, captions) triples with distinct keys and captions."""
    return [(f"img{start + i:04d}", tiny_image(start + i, 48 + i % 3, 32 + i % 5),
             [f"caption {j} of image {start + i}" for j in range(1 + i % captions_per_sample)])
            for i in range(count)]


def write_tsv_pair(folder, image_name, text_name, rows):
    """Write an image TSV and a text TSV.

    Args:
        rows: (key, image bytes or a raw image field string, text field string) triples.
    """
    os.makedirs(folder, exist_ok=True)
    image_path, text_path = os.path.join(folder, image_name), os.path.join(folder, text_name)
    with open(image_path, "w", encoding="utf-8") as fi, \
            open(text_path, "w", encoding="utf-8") as ft:
        for key, image, text in rows:
            field = base64.b64encode(image).decode("ascii") if isinstance(image, bytes) else image
            fi.write(f"{key}\t{field}\n")
            ft.write(f"{key}\t{text}\n")
    return image_path, text_path


def captions_field(captions):
    """The JSON text field of a list of captions."""
    return json.dumps({"captions": captions})


def write_wds_shards(folder, samples, per_shard, prefix="shard"):
    """Write WebDataset shards (img2dataset layout: KEY.jpg/png, KEY.txt and/or KEY.json).

    Args:
        samples: dicts with "__key__" and extension entries (bytes or str).
    """
    import webdataset as wds

    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, start in enumerate(range(0, len(samples), per_shard)):
        path = os.path.join(folder, f"{prefix}-{index:05d}.tar")
        with wds.TarWriter(path) as writer:
            for sample in samples[start:start + per_shard]:
                writer.write(sample)
        paths.append(path)
    return paths
