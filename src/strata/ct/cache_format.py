"""How a cached CT study is stored on disk and read back (a quarter of the plain size).

The plain layout (``strata.ct.preprocess``'s tensors, what every reader sees) repeats one
intensity channel ``channels`` times and stores masks and region crops uncompressed: at
the full config a study is 360 MB, about 9 TB for RadGenome-ChestCT's training split.
On disk (format 2) ``image`` and ``region_images`` keep one channel, and the four large
tensors are zstd-compressed bytes (lossless: masks are mostly 0, region crops mostly the
constant outside value); :func:`read_study` restores the plain layout exactly, so what
the models see is unchanged. zstd through pyarrow (already a dependency) rather than a
new package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from strata.io.tensor_files import load_tensors_and_metadata

FORMAT = 2
COMPRESSED = ("image", "masks", "region_images", "region_masks")
REPEATED_CHANNEL = {"image": 0, "region_images": 1}  # tensor -> its channel axis
CODEC = "zstd"


def pack_study(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Plain study tensors -> (tensors to store, metadata describing how to restore them)."""
    channels = int(tensors["image"].shape[0])
    stored: dict[str, Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name in REPEATED_CHANNEL:
            axis = REPEATED_CHANNEL[name]
            first = tensor.narrow(axis, 0, 1)
            if not torch.equal(first.expand_as(tensor), tensor):
                raise ValueError(f"{name}: the channels are not copies of the first one")
            tensor = first
        if name in COMPRESSED:
            array = tensor.contiguous().numpy()
            packed = pa.compress(array.tobytes(), codec=CODEC, asbytes=True)
            stored[name] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
            layout[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "bytes": array.nbytes}
        else:
            stored[name] = tensor
    return stored, {"format": FORMAT, "channels": channels, "layout": layout}


def unpack_study(stored: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Tensor]:
    """The inverse of :func:`pack_study`: the plain layout, equal bit for bit."""
    out = dict(stored)
    for name, spec in meta["layout"].items():
        raw = pa.decompress(stored[name].numpy().tobytes(), decompressed_size=spec["bytes"], codec=CODEC,
                            asbytes=True)
        out[name] = torch.from_numpy(np.frombuffer(raw, dtype=spec["dtype"]).reshape(spec["shape"]).copy())
    for name, axis in REPEATED_CHANNEL.items():
        shape = list(out[name].shape)
        shape[axis] = meta["channels"]
        out[name] = out[name].expand(shape)
    return out


def read_study(path: str | Path) -> dict[str, Tensor]:
    """A cached study in the plain layout (its content hash verified); files written
    before format 2 are plain already."""
    stored, meta = load_tensors_and_metadata(path)
    return unpack_study(stored, meta) if meta.get("format") == FORMAT else stored
