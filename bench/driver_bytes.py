"""Bytes through the ingest driver per image: what every worker sends back.

    .venv/bin/python -m bench.driver_bytes [--per-class 10] [--naip-count 100]

Issue 31's measure of "workers write, the driver decides" (goal: under 1 KB an image, metadata
only). A mapper that counts the pickled size of every outcome the workers return (what a
process pool and Ray both send back: :func:`geopile.ingest.decide`'s result, reason and
failure) wraps the local pool for one ingest of each source on a small world. Ray pickles the
same objects, so the bytes are the engine's either way. The baseline, measured in the same run:
the same outcomes plus the payloads the workers wrote to the payload store themselves, which is
what travelled back when the driver wrote every payload (before issue 31).
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import running_world
from geopile.engines import LocalMapper
from geopile.ingest import ingest
from geopile.params import load_params
from geopile.settings import check_params
from geopile.sources import create_source
from geopile.world.world import PARAMS_OVERLAY

REPO = Path(__file__).resolve().parents[1]


class CountingMapper(LocalMapper):
    """A local pool that weighs every result as it crosses back to this process."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.outcomes = self.bytes = self.accepted = 0

    def map(self, fn: Callable, items: Sequence, shared: Any, **kw: Any) -> Iterator:
        for outcome in super().map(fn, items, shared, **kw):
            self.outcomes += 1
            self.bytes += len(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
            result = outcome[0]
            if result is not None:
                self.accepted += 1
                assert result.payload is None, "a payload travelled back to the driver"
            yield outcome


def written(data: Path, name: str) -> int:
    """The payload bytes the workers wrote (the records' files under raw/NAME)."""
    if name not in MADE:
        return 0
    import pyarrow.parquet as pq

    from geopile.records import records_path

    table = pq.read_table(records_path(data, name), columns=["path"])
    generated = [p for p in table["path"].to_pylist() if p.startswith(f"raw/{name}/")]
    return sum((data / p).stat().st_size for p in generated)


MADE = {"naip", "sentinel2"}  # the sources whose workers make payloads (the rest read files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--naip-count", type=int, default=100)
    parser.add_argument("--sentinel2-count", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_world(Path(tmp), args.per_class) as (
            world, _):
        params = load_params([REPO / "params.yaml", world / PARAMS_OVERLAY])
        params["sources"]["naip"]["count"] = args.naip_count
        params["sources"]["sentinel2"]["count"] = args.sentinel2_count
        settings = check_params(params)
        print(f"{'source':<11} {'decided':>7} {'images':>6} {'back/decided':>12} "
              f"{'back/image':>10} {'written/image':>13} {'baseline/image':>14} "
              f"{'ratio':>6}")
        for name in ["naip", "sentinel2", "resisc45", "rsd46"]:
            source = create_source(name, settings.sources[name], Path(tmp) / f"d-{name}",
                                   progress=False)
            mapper = CountingMapper(2)
            ingest(source, mapper=mapper, progress=False)
            mapper.close()
            payload = written(Path(tmp) / f"d-{name}", name)
            images = max(1, mapper.accepted)
            baseline = mapper.bytes + payload  # what the driver received when it wrote them
            print(f"{name:<11} {mapper.outcomes:>7} {mapper.accepted:>6} "
                  f"{mapper.bytes / mapper.outcomes:>12,.0f} {mapper.bytes / images:>10,.0f} "
                  f"{payload / images:>13,.0f} {baseline / images:>14,.0f} "
                  f"{mapper.bytes / baseline:>6.3f}")

if __name__ == "__main__":
    main()
