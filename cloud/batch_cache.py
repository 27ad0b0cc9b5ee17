"""The running batch of :class:`~edgecloud.cloud.transformers_engine.TransformersEngine`: its rows'
keys and values in one left-padded cache that grows in place, and how two batches merge.

Each row keeps its own keys and values inside the batch cache; joining pads the shorter side on
the left (:func:`merge_batches`); the engine's rows are opaque here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["Batch", "GrowingCache", "merge_batches"]


class GrowingLayer(DynamicLayer):
    """A cache layer with spare room: a decode step writes its token in place.

    ``DynamicLayer`` concatenates, copying the whole cache every step; on a
    batch of 16 that copy was 40% of the step (measured by
    ``benchmarks/cloud_throughput.py``'s profile). Capacity doubles when full.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, cache_kwargs=None):  # type: ignore[no-untyped-def]
        if not self.is_initialized:
            self.lazy_initialization(key_states)
            self._length = 0
            self._key_buffer = self._value_buffer = None
        new = key_states.shape[-2]
        needed = self._length + new
        if self._key_buffer is None or needed > self._key_buffer.shape[-2]:
            capacity = max(64, 2 * needed)
            shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
            # Uninitialised is fine: only [:length] is ever exposed, and it is always written.
            keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
            if self._length:
                keys[..., : self._length, :] = self._key_buffer[..., : self._length, :]
                values[..., : self._length, :] = self._value_buffer[..., : self._length, :]
            self._key_buffer, self._value_buffer = keys, values
        self._key_buffer[..., self._length : needed, :] = key_states
        self._value_buffer[..., self._length : needed, :] = value_states
        self._length = needed
        self.keys = self._key_buffer[..., :needed, :]
        self.values = self._value_buffer[..., :needed, :]
        return self.keys, self.values


class GrowingCache(DynamicCache):
    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
        for index, (keys, values) in enumerate(layers or ()):
            self.update(keys, values, index)


@dataclass
class Batch:
    rows: list[Any] = field(default_factory=list)
    """The engine's per-row state, in the cache's row order."""
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    next_logits: torch.Tensor | None = None


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[-2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros((*tensor.shape[:-2], missing, tensor.shape[-1]))
    return torch.cat([pad, tensor], dim=-2)


def merge_batches(old: Batch, new: Batch) -> Batch:
    width = max(old.mask.shape[1], new.mask.shape[1])
    layers = [
        (
            torch.cat([_left_pad(a.keys, width), _left_pad(b.keys, width)]),
            torch.cat([_left_pad(a.values, width), _left_pad(b.values, width)]),
        )
        for a, b in zip(old.cache.layers, new.cache.layers, strict=True)
    ]
    masks = [torch.cat([m.new_zeros((m.shape[0], width - m.shape[1])), m], dim=1) for m in (old.mask, new.mask)]
    return Batch(
        old.rows + new.rows,
        GrowingCache(layers),
        torch.cat(masks),
        torch.cat([old.positions, new.positions]),
        torch.cat([old.next_logits, new.next_logits]),
    )
