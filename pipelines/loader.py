"""GeoPile as torch batches: a resumable DataLoader over a build's shards (local or S3).

``GeoPileLoader`` joins :class:`geopile.stream.ShardStream` (what each rank and worker reads)
and :class:`geopile.augment.GfmTransform` (what it becomes) to torch's DataLoader, and counts
what the trainer has taken from each worker so that ``state_dict()`` resumes mid-epoch
exactly, with any number of ranks and workers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geopile.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STRETCH_K,
    STRETCH_MEAN,
    STRETCH_STD,
    BandError,
    DecodeError,
    GfmTransform,
)
from geopile.stream import Leg, RawSample, ShardStream, StreamConfig, StreamError, undelivered

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "png", "tif")


def _image_member(members: dict[str, bytes | memoryview]) -> tuple[str, bytes | memoryview]:
    for ext in IMAGE_EXTS:
        if ext in members:
            return ext, members[ext]
    raise KeyError(f"no image member among {sorted(members)}")


def _whole(batch: dict[str, Any]) -> dict[str, Any]:
    """The workers already deliver whole batches."""
    return batch


@dataclass(frozen=True)
class Start:
    """Where a pass over an epoch starts.

    ``leg`` and the batches already ``taken`` from each of its workers; ``first`` is the worker
    whose batch comes first (the DataLoader always asks its worker 0 first, so DataLoader worker
    ``j`` plays the leg's worker ``(j + first) % workers``).
    """

    leg: Leg
    taken: tuple[int, ...]
    first: int = 0


class _Batches(IterableDataset):
    """One rank's batches of an epoch (or of its rest), split over workers.

    Workers persist across epochs: the epoch to read comes from ``epoch``, a one-element tensor
    in shared memory that the loader sets before each pass, so no worker restarts at the
    boundary. ``start`` applies only to its own epoch; any other starts afresh.
    """

    def __init__(self, stream: ShardStream, transform: GfmTransform, start: Start,
                 epoch: torch.Tensor, device_decode: bool) -> None:
        super().__init__()
        self.stream, self.transform, self.start = stream, transform, start
        self.epoch, self.device_decode = epoch, device_decode
        self.last: tuple[np.ndarray | dict[str, Any], str, int] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        epoch, workers = int(self.epoch[0]), len(self.start.taken)
        start = self.start if self.start.leg.epoch == epoch else \
            Start(Leg.whole(epoch, len(self.stream.refs)), (0,) * workers)
        worker = ((info.id if info else 0) + start.first) % workers
        size = self.stream.config.batch_size
        indices = self.stream.worker_indices(start.leg, worker, workers)
        indices = indices[start.taken[worker] * size:]
        raws = self.stream.read(indices, epoch, want=IMAGE_EXTS)
        for _ in range(len(indices) // size):
            batch = self._batch([next(raws) for _ in range(size)], epoch)
            batch["worker"] = worker
            yield batch

    def _batch(self, raws: list[RawSample], epoch: int) -> dict[str, Any]:
        """Decode a batch into one array; a corrupt sample's slot repeats a good sample.

        Counts must stay equal across ranks (or DDP hangs), so a slot is never left out: it
        takes the batch's previous good sample, else this worker's last good one, else the
        batch's next good one.
        """
        n, size = len(raws), self.transform.size
        if self.device_decode:
            made: list[dict[str, Any] | None] = [None] * n
        else:
            images = torch.empty((n, size, size, self.transform.channels), dtype=torch.uint8)
            if get_worker_info() is not None:
                images.share_memory_()  # written in place, handed over without a copy
            pixels = images.numpy()
        keys, index, bad = [r.key for r in raws], [r.index for r in raws], []
        for i, raw in enumerate(raws):
            try:
                ext, data = _image_member(raw.members)
                if self.device_decode:
                    made[i] = self._encoded(ext, data, epoch, raw.index)
                else:
                    self.transform.into(pixels[i], data, ext, epoch, raw.index)
            except BandError as err:  # the config asks what the build lacks: stop, clearly
                shard = self.stream.index["shards"][self.stream.refs[raw.index].shard]["name"]
                raise BandError(f"{self.stream.storage.where(shard)} sample {raw.key}: "
                                f"{err}") from err
            except (DecodeError, KeyError) as err:
                log.warning("skipping corrupt sample %s: %s", raw.key, raw.error or err)
                bad.append(i)
                continue
            self.last = (made[i] if self.device_decode else pixels[i], raw.key, raw.index)
        for i in bad:
            good = [j for j in range(n) if j not in bad]
            before = [j for j in good if j < i]
            if before or (self.last is None and good):
                j = before[-1] if before else good[0]
                source = (made[j] if self.device_decode else pixels[j], keys[j], index[j])
            elif self.last is not None:
                source = self.last
            else:
                raise StreamError(f"no sample of a whole batch could be read (last: "
                                  f"{raws[-1].key}: {raws[-1].error}); see the warnings above")
            if self.device_decode:
                made[i] = source[0]
            else:
                pixels[i] = source[0]
            keys[i], index[i] = source[1], source[2]
        out: dict[str, Any] = {
            "key": keys, "index": torch.tensor(index),
            "substitute": torch.tensor([i in bad for i in range(n)]),
            "mask": torch.from_numpy(self.transform.masks(epoch, np.asarray(index))),
        }
        if self.device_decode:
            out.update(_jpeg_batch(made))
        else:
            # NHWC in memory, seen as NCHW (channels-last): no transposition
            out["image"] = images.permute(0, 3, 1, 2)
        return out

    def _encoded(self, ext: str, data: bytes | memoryview, epoch: int,
                 index: int) -> dict[str, Any]:
        """The bytes and the drawn crop and flip, for decoding on the device."""
        if ext != "jpg":
            raise DecodeError(f"device decoding needs JPEG, got .{ext}")
        rng = self.transform.rng(epoch, index)
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as err:
            raise DecodeError(str(err)) from err
        box = self.transform.crop_box(height, width, rng)
        return {"jpeg": data, "box": box, "flip": rng.random() < self.transform.flip}


def _jpeg_batch(made: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A device-decoding batch: flat bytes with offsets, boxes and flips.

    One flat tensor, not one per image: each tensor crossing from a worker costs a
    shared-memory segment of its own.
    """
    sizes = torch.tensor([len(m["jpeg"]) for m in made])
    return {"jpeg": torch.frombuffer(bytearray(b"".join(m["jpeg"] for m in made)),
                                     dtype=torch.uint8),
            "jpeg_offsets": torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]),
            "box": torch.tensor([m["box"] for m in made]),
            "flip": torch.tensor([m["flip"] for m in made])}


def normalize(images: torch.Tensor, stretched: bool = False) -> torch.Tensor:
    """uint8 NCHW -> float ImageNet-normalised, on whatever device ``images`` is on.

    ``stretched``: multi-band images stretched per band by the loader (``bands``); each channel
    is then standardised with the stretch's own mean and std (any channel count).
    """
    if stretched:
        return (images.float() / 255 - STRETCH_MEAN) / STRETCH_STD
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


def with_bands(transform: GfmTransform, bands: list[str], index: dict[str, Any],
               url: str) -> GfmTransform:
    """``transform`` streaming ``bands``, stretched by the build's pooled per-band stats.

    A build without ``index.json`` ``bands`` (JPEG/RGB builds, or one written before
    multi-band shards) or without one of the names fails here, naming the build and band.
    """
    summary = index.get("bands")
    if not summary:
        raise BandError(f"{url}: the build holds no multi-band samples (its index.json has no "
                        f"'bands'), so it cannot stream bands {bands}: set pretrain.bands to "
                        "null (RGB) or use a multi-band build such as sentinel2")
    names = summary["names"]
    missing = [b for b in bands if b not in names]
    if missing:
        raise BandError(f"{url}: the build has no band {', '.join(missing)} (its bands: "
                        f"{names})")
    at = [names.index(b) for b in bands]
    mean = [summary["mean"][i] for i in at]
    std = [summary["std"][i] for i in at]
    return dataclasses.replace(
        transform, bands=tuple(bands),
        lo=tuple(m - STRETCH_K * s for m, s in zip(mean, std, strict=True)),
        hi=tuple(m + STRETCH_K * s for m, s in zip(mean, std, strict=True)))


@dataclass
class LoaderState:
    """Where the trainer is: the epoch's leg, its layout, and the batches taken since.

    ``leg`` is what the epoch owed when this layout began; ``taken[k]`` counts the batches the
    trainer has taken from the leg's worker ``k`` since, and ``next`` is the worker whose
    batch comes next.
    """

    leg: Leg
    world: int
    taken: list[int]
    next: int = 0
    skipped: int = 0  # corrupt samples met (their slots repeat a good sample)

    def start(self) -> Start:
        """Where the next pass starts."""
        return Start(self.leg, tuple(self.taken), self.next)


class GeoPileLoader:
    """Batches of a GeoPile build for one rank: equal across ranks, resumable mid-epoch.

    Iterating yields one epoch (or the rest of one after ``load_state_dict``); the next
    iteration is the next epoch, from the same worker processes. Batches are dicts: ``image``
    (uint8 N x 3 x S x S; normalise on the device with :func:`normalize`), ``mask`` (N x S/4 x
    S/4, 1 = masked), ``key``, ``index``, ``substitute`` (True where a corrupt sample's slot
    repeats a good one), ``worker``; with ``device_decode`` ``jpeg``/``box``/``flip`` instead
    of ``image`` (see :func:`decode_on_device`).

    ``state_dict()`` resumes with any world size and number of workers: the rest of the epoch,
    exactly its undelivered samples, is dealt out again (:func:`geopile.stream.undelivered`).

    A corrupt sample is one that does not decode, does not parse, or whose bytes fail their
    xxh3 in the index (``verify``; a flipped bit in a JPEG that still decodes is caught only
    so); more than ``max_bad_per_shard`` failing checksums in one shard stop the run with a
    :class:`geopile.stream.StreamError` naming it.
    """

    def __init__(self, url: str, *, batch_size: int, workers: int = 0, rank: int = 0,
                 world: int = 1, seed: int = 0, remainder: str = "drop", block: int = 64,
                 window: int = 16, read_ahead: int = 8, transform: GfmTransform | None = None,
                 cache_dir: str | None = None, cache_bytes: int = 0,
                 device_decode: bool = False, pin_memory: bool = False, verify: bool = True,
                 max_bad_per_shard: int = 3, bands: list[str] | None = None) -> None:
        config = StreamConfig(seed=seed, block=block, window=window, batch_size=batch_size,
                              remainder=remainder, read_ahead=read_ahead, verify=verify,
                              max_bad_per_shard=max_bad_per_shard)
        self.stream = ShardStream(url, config, rank=rank, world=world, cache_dir=cache_dir,
                                  cache_bytes=cache_bytes)
        self.transform = transform or GfmTransform(seed=seed)
        if bands is not None:
            self.transform = with_bands(self.transform, bands, self.stream.index, url)
            if device_decode:
                raise ValueError("device_decode decodes JPEG only: it cannot stream bands")
        self.batch_size, self.workers = batch_size, workers
        self.device_decode, self.pin_memory = device_decode, pin_memory
        self.state = self._fresh(0)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._loader: DataLoader | None = None

    def _fresh(self, epoch: int, skipped: int = 0) -> LoaderState:
        return LoaderState(Leg.whole(epoch, len(self.stream.refs)), self.stream.world,
                           [0] * max(1, self.workers), skipped=skipped)

    def __len__(self) -> int:
        """Batches in a whole epoch (the same for any number of workers)."""
        return self.stream.batches_per_epoch()

    def _batches(self) -> DataLoader:
        """The DataLoader for the state: kept, with its workers, from epoch to epoch."""
        start = self.state.start()
        if self._loader is not None:
            kept = self._loader.dataset.start  # what the running workers do in start's epoch
            if kept.leg.epoch != start.leg.epoch:
                kept = Start(Leg.whole(start.leg.epoch, len(self.stream.refs)), kept.taken)
            if kept != start:
                self._loader = None  # a resume, or a pass left mid-epoch: new workers
        if self._loader is None:
            dataset = _Batches(self.stream, self.transform, start, self._epoch,
                               self.device_decode)
            self._loader = DataLoader(dataset, batch_size=None, num_workers=self.workers,
                                      collate_fn=_whole, pin_memory=self.pin_memory,
                                      persistent_workers=self.workers > 0)
        return self._loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        state = self.state
        self._epoch[0] = state.leg.epoch
        for batch in self._batches():
            state.taken[batch["worker"]] += 1
            state.next = (batch["worker"] + 1) % len(state.taken)
            state.skipped += int(batch["substitute"].sum())
            yield batch
        self.state = self._fresh(state.leg.epoch + 1, state.skipped)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue (exactly, or with another layout).

        ``owed`` (the epoch's undelivered samples as spans of its order) is enough for any
        layout; ``leg``, ``taken`` and ``next`` continue the same layout batch for batch.
        """
        config, state = self.stream.config, self.state
        owed = undelivered(state.leg, config, state.world, len(state.taken), state.taken)
        return {"epoch": state.leg.epoch, "owed": [list(s) for s in owed.spans],
                "leg": [list(s) for s in state.leg.spans], "world": state.world,
                "taken": list(state.taken), "next": state.next, "skipped": state.skipped,
                "samples": len(self.stream.refs), "seed": config.seed, "block": config.block,
                "window": config.window, "batch_size": self.batch_size,
                "remainder": config.remainder}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``, with any world size and number of workers.

        With the layout it was written with, the run continues with the very batches it would
        have had; with another, the epoch's undelivered samples are dealt out again.
        """
        if "owed" not in state:
            raise ValueError("cannot resume: the loader state was written by an older GeoPile "
                             "(no 'owed' samples); start the run afresh")
        mine = self.state_dict()
        for key in ("samples", "seed", "block", "window", "batch_size", "remainder"):
            if state[key] != mine[key]:
                raise ValueError(f"cannot resume: the checkpoint's {key} is {state[key]}, "
                                 f"this loader's is {mine[key]}")
        workers = max(1, self.workers)
        if state["world"] == self.stream.world and len(state["taken"]) == workers:
            leg = Leg(state["epoch"], tuple((int(a), int(b)) for a, b in state["leg"]))
            self.state = LoaderState(leg, self.stream.world, list(state["taken"]),
                                     state["next"], state["skipped"])
        else:
            leg = Leg(state["epoch"], tuple((int(a), int(b)) for a, b in state["owed"]))
            self.state = LoaderState(leg, self.stream.world, [0] * workers,
                                     skipped=state["skipped"])
