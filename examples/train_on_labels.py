"""Stream an `emerdiff export --format webdataset` export into PyTorch: image and mask, cropped together."""

import functools
import io

import numpy as np
import torch
import webdataset as wds
from PIL import Image

IGNORE = 255  # mask value of pixels without a class, and of padding


def decode_mask(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)), dtype=np.int64))  # (H, W) ids


def crop_together(sample: tuple, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    image, mask = sample  # (3, H, W) float in [0, 1], (H, W) int64
    pad = (0, max(size - mask.shape[1], 0), 0, max(size - mask.shape[0], 0))  # right, bottom
    image, mask = torch.nn.functional.pad(image, pad), torch.nn.functional.pad(mask, pad, value=IGNORE)
    top = int(torch.randint(mask.shape[0] - size + 1, ()))
    left = int(torch.randint(mask.shape[1] - size + 1, ()))
    return image[:, top:top + size, left:left + size], mask[top:top + size, left:left + size]


def training_loader(urls, size: int = 256, batch_size: int = 16, num_workers: int = 4) -> torch.utils.data.DataLoader:
    dataset = (
        wds.WebDataset(urls, shardshuffle=100)
        .shuffle(1000)
        .decode(wds.handle_extension("seg.png", decode_mask), "torchrgb")  # the mask first: it is a .png too
        .to_tuple("jpg;jpeg;png;webp", "seg.png")
        .map(functools.partial(crop_together, size=size))
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
