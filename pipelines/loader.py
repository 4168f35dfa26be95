"""GeoPile as torch batches: a resumable DataLoader over a build's shards (local or S3).

``GeoPileLoader`` joins :class:`geopile.stream.ShardStream` (what each rank and worker reads)
and :class:`geopile.augment.GfmTransform` (what it becomes) to torch's DataLoader, and counts
what the trainer has taken so that ``state_dict()`` can resume mid-epoch exactly, even with
another number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geopile.augment import IMAGENET_MEAN, IMAGENET_STD, DecodeError, GfmTransform
from geopile.stream import ShardStream, StreamConfig

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "png", "tif")


def _image_member(members: dict[str, bytes]) -> tuple[str, bytes]:
    for ext in IMAGE_EXTS:
        if ext in members:
            return ext, members[ext]
    raise KeyError(f"no image member among {sorted(members)}")


class _Samples(IterableDataset):
    """One epoch (or its rest) of one rank, split over the DataLoader's workers."""

    def __init__(self, stream: ShardStream, transform: GfmTransform, epoch: int, consumed: int,
                 layout: int | None, device_decode: bool) -> None:
        super().__init__()
        self.stream, self.transform = stream, transform
        self.epoch, self.consumed, self.layout = epoch, consumed, layout
        self.device_decode = device_decode

    def _prepare(self, ext: str, data: bytes, epoch: int, index: int) -> dict[str, Any]:
        if not self.device_decode:
            return {"image": self.transform(data, ext, epoch, index)}
        # decoding happens on the device: ship the bytes and the drawn crop and flip
        if ext != "jpg":
            raise DecodeError(f"device decoding needs JPEG, got .{ext}")
        rng = self.transform.rng(epoch, index)
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as err:
            raise DecodeError(str(err)) from err
        box = self.transform.crop_box(height, width, rng)
        flip = rng.random() < self.transform.flip
        return {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                "box": torch.tensor(box), "flip": flip}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        last: dict[str, Any] | None = None
        owed = 0
        for raw in self.stream.samples(self.epoch, worker, workers, self.consumed, self.layout):
            try:
                ext, data = _image_member(raw.members)
                sample = self._prepare(ext, data, raw.epoch, raw.index)
            except (DecodeError, KeyError) as err:
                # counts must stay equal across ranks (or DDP hangs): the slot is filled with
                # this worker's previous good sample
                log.warning("skipping corrupt sample %s: %s", raw.key, raw.error or err)
                if last is None:
                    owed += 1
                    continue
                yield {**last, "substitute": True}
                continue
            sample.update(key=raw.key, index=raw.index, substitute=False)
            yield sample
            for _ in range(owed):
                yield {**sample, "substitute": True}
            owed, last = 0, sample


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": [s["key"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
        "substitute": torch.tensor([s["substitute"] for s in samples]),
    }
    if "image" in samples[0]:
        # one copy into an NHWC batch, seen as NCHW (channels-last memory): no transposition
        out["image"] = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    else:
        # one flat tensor, not one per image: each tensor crossing from a worker costs a
        # shared-memory segment of its own
        sizes = torch.tensor([len(s["jpeg"]) for s in samples])
        out["jpeg"] = torch.cat([s["jpeg"] for s in samples])
        out["jpeg_offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        out["box"] = torch.stack([s["box"] for s in samples])
        out["flip"] = torch.tensor([s["flip"] for s in samples])
    return out


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float ImageNet-normalised, on whatever device ``images`` is on."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def decode_on_device(
    batch: dict[str, Any], size: int, device: str | torch.device
) -> torch.Tensor:
    """Decode a device-decoding batch (``jpeg``, ``box``, ``flip``) to uint8 NCHW on ``device``.

    ``torchvision.io.decode_jpeg`` decodes the whole batch at once (nvJPEG on CUDA); crop,
    resize and flip follow on the device.
    """
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2.functional import resized_crop

    offsets = batch["jpeg_offsets"].tolist()
    jpegs = [batch["jpeg"][a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    images = decode_jpeg(jpegs, device=device)
    out = []
    for image, (top, left, h, w), flip in zip(images, batch["box"].tolist(),
                                              batch["flip"].tolist(), strict=True):
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        crop = resized_crop(image, top, left, h, w, [size, size], antialias=False)
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


@dataclass
class LoaderState:
    """Where the trainer is: the epoch, the samples it has taken, and the plan's worker layout."""

    epoch: int = 0
    consumed: int = 0
    layout: int | None = None  # workers the running epoch was laid out for
    skipped: int = 0  # corrupt samples met (their slots repeat a good sample)


class GeoPileLoader:
    """Batches of a GeoPile build for one rank: equal across ranks, resumable mid-epoch.

    Iterating yields one epoch (or the rest of one after ``load_state_dict``); the next
    iteration is the next epoch. Batches are dicts: ``image`` (uint8 N x 3 x S x S; normalise
    on the device with :func:`normalize`), ``mask`` (N x S/4 x S/4, 1 = masked), ``key``,
    ``index``, ``substitute`` (True where a corrupt sample's slot repeats a good one); with
    ``device_decode`` ``jpeg``/``box``/``flip`` instead of ``image`` (see
    :func:`decode_on_device`).

    A corrupt sample is one that does not decode, does not parse, or whose bytes fail their
    xxh3 in the index (``verify``; a flipped bit in a JPEG that still decodes is caught only
    so); more than ``max_bad_per_shard`` failing checksums in one shard stop the run with a
    :class:`geopile.stream.StreamError` naming it.
    """

    def __init__(self, url: str, *, batch_size: int, workers: int = 0, rank: int = 0,
                 world: int = 1, seed: int = 0, remainder: str = "drop", block: int = 16,
                 window: int = 64, read_ahead: int = 4, transform: GfmTransform | None = None,
                 cache_dir: str | None = None, cache_bytes: int = 0,
                 device_decode: bool = False, pin_memory: bool = False, verify: bool = True,
                 max_bad_per_shard: int = 3) -> None:
        config = StreamConfig(seed=seed, block=block, window=window, batch_size=batch_size,
                              remainder=remainder, read_ahead=read_ahead, verify=verify,
                              max_bad_per_shard=max_bad_per_shard)
        self.stream = ShardStream(url, config, rank=rank, world=world, cache_dir=cache_dir,
                                  cache_bytes=cache_bytes)
        self.transform = transform or GfmTransform(seed=seed)
        self.batch_size, self.workers = batch_size, workers
        self.device_decode, self.pin_memory = device_decode, pin_memory
        self.state = LoaderState()

    def __len__(self) -> int:
        """Batches in a full epoch."""
        return self.stream.epoch_length(self.workers) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        state = self.state
        layout = state.layout or max(1, self.workers)
        state.layout = layout
        dataset = _Samples(self.stream, self.transform, state.epoch, state.consumed, layout,
                           self.device_decode)
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers,
                            collate_fn=_collate, pin_memory=self.pin_memory,
                            persistent_workers=False)
        for batch in loader:
            # masks are drawn here, per batch, from the batch's sample indices
            batch["mask"] = torch.from_numpy(self.transform.masks(state.epoch, batch["index"]))
            state.consumed += len(batch["key"])
            state.skipped += int(batch["substitute"].sum())
            yield batch
        state.epoch, state.consumed, state.layout = state.epoch + 1, 0, None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue with exactly the next samples."""
        state = self.state
        return {"epoch": state.epoch, "consumed": state.consumed, "layout": state.layout,
                "skipped": state.skipped, "seed": self.stream.config.seed,
                "world": self.stream.world, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; the number of workers may differ, not the world."""
        mine = self.state_dict()
        for key in ("seed", "world", "batch_size"):
            if state[key] != mine[key]:
                raise ValueError(f"cannot resume: the checkpoint's {key} is {state[key]}, "
                                 f"this loader's is {mine[key]}")
        self.state = LoaderState(epoch=state["epoch"], consumed=state["consumed"],
                                 layout=state["layout"], skipped=state.get("skipped", 0))
