"""The vision half of a prefill step: which scheduled tokens are image tokens, their features
(encoded once per distinct image, batched over the step), and the flat rows they replace."""

from __future__ import annotations

from collections import OrderedDict, defaultdict

import numpy as np
import torch
from torch import nn

from seekd.engine.multimodal import ImageInput
from seekd.engine.scheduler import SchedulerOutput

# Feature rows kept between steps (a prompt prefilled in chunks); about 64 MiB at 4096 bf16 dims.
ENCODER_CACHE_ROWS = 8192


class EncoderCache:
    """Image features computed at prefill, kept by content hash until their tokens are all in the KV
    cache: a prompt prefilled in chunks encodes each image once, and identical images in one step
    are encoded once. Bounded by feature rows (LRU); an evicted entry is simply encoded again."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._rows = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def get(self, key: bytes) -> torch.Tensor:
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: bytes, features: torch.Tensor) -> None:
        if key in self._entries:
            return
        self._entries[key] = features
        self._rows += features.shape[0]
        while self._rows > self.max_rows and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self._rows -= old.shape[0]

    def drop(self, key: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._rows -= old.shape[0]

    def __len__(self) -> int:
        return len(self._entries)


class ImageFeatures:
    def __init__(self, model: nn.Module, device: torch.device, cache_rows: int = ENCODER_CACHE_ROWS) -> None:
        self.model = model
        self.device = device
        self.input_names: tuple[str, ...] = model.image_input_names
        self.cache = EncoderCache(cache_rows)
        self.num_encoded = 0  # images run through the encoder (a cache hit is not counted)

    def for_step(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(flat rows, features) of the step's image tokens, or None when it schedules none. Rows
        follow the flat batch: the scheduled tokens of `out.requests`, in order."""
        spans: list[tuple[ImageInput, int, int, int]] = []  # image, first and end position, flat row of first
        base = 0
        for request in out.requests:
            n = out.num_scheduled_tokens[request.request_id]
            start = request.num_computed_tokens
            for image in request.images:
                lo, hi = max(start, image.offset), min(start + n, image.end)
                if lo < hi:
                    spans.append((image, lo, hi, base + lo - start))
            base += n
        if not spans:
            return None
        features = self._encode({image.content_hash: image for image, *_ in spans})
        rows, pieces = [], []
        for image, lo, hi, row in spans:
            rows.append(np.arange(row, row + hi - lo))
            pieces.append(features[image.content_hash][lo - image.offset : hi - image.offset])
            if hi == image.end:  # its last tokens are prefilled now
                self.cache.drop(image.content_hash)
        flat_rows = torch.from_numpy(np.concatenate(rows)).to(self.device, non_blocking=True)
        return flat_rows, torch.cat(pieces)

    def _encode(self, images: dict[bytes, ImageInput]) -> dict[bytes, torch.Tensor]:
        """Features of each distinct image: cached ones as kept, the rest encoded in batches of one
        pixel shape each."""
        found = {key: self.cache.get(key) for key in images if key in self.cache}
        by_shape: dict[tuple, list[bytes]] = defaultdict(list)
        for key, image in images.items():
            if key not in found:
                by_shape[tuple(tuple(image.pixels[n].shape) for n in self.input_names)].append(key)
        for keys in by_shape.values():
            batch = [
                torch.from_numpy(np.stack([images[k].pixels[name].to_numpy() for k in keys])).to(
                    self.device, self.model_dtype
                )
                for name in self.input_names
            ]
            encoded = self.model.encode_images(*batch)
            self.num_encoded += len(keys)
            for key, feats in zip(keys, encoded):
                found[key] = feats
                self.cache.put(key, feats)
        return found

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype
