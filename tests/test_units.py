import io
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
from PIL import Image

from geopile.imagestats import BadImage, global_entropy, image_stats, local_entropy
from geopile.params import ParamsError, deep_merge, load_params
from geopile.records import make_key
from geopile.stac import _tile_ref, resolve_signer
from geopile.urls import strip_secrets

REFERENCE = Path(__file__).resolve().parent / "data"  # copied from shared/reference


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_entropy_definitions():
    flat = np.full((64, 64), 7, np.uint8)
    assert global_entropy(flat) == 0.0 and local_entropy(flat) == 0.0
    ramp = np.tile(np.arange(256, dtype=np.uint8), (16, 1))  # every level equally often
    assert global_entropy(ramp) == pytest.approx(8.0)
    # a smooth ramp is wide globally but each 16x16 block holds only 16 levels: 4 bits
    assert local_entropy(ramp) == pytest.approx(4.0)


def test_image_stats_hashes():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    a, b = image_stats(_jpeg(pixels, 90)), image_stats(_jpeg(pixels, 50))
    assert (a.width, a.height, a.bands, a.format) == (80, 64, 3, "jpeg")
    assert a.xxh3_bytes != b.xxh3_bytes and len(a.xxh3_bytes) == 32
    assert 0 <= a.phash < 2**64
    same = image_stats(_jpeg(pixels, 90))
    assert same == a  # deterministic


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"Thumbs.db junk bytes", "not an image"),
        (_jpeg(np.zeros((32, 32, 3), np.uint8))[:200], "truncated"),
        (_jpeg(np.zeros((32, 32), np.uint8)), "wrong band count: 1"),
    ],
)
def test_bad_images_have_reasons(data, reason):
    with pytest.raises(BadImage, match=reason):
        image_stats(data, expected_bands=3)


def test_keys_have_no_dots_or_spaces():
    assert make_key("rsd46", "train", "Sewage plant-type-one", "0001") == (
        "rsd46/train_Sewage_plant-type-one_0001"
    )
    assert "." not in make_key("naip", "tx.2020.0").split("/")[1]


def test_strip_secrets():
    url = "https://naipeuwest.blob.core.windows.net/naip/v002/a.tif?st=2020&se=2021&sig=abc%3D"
    assert strip_secrets(url) == "https://naipeuwest.blob.core.windows.net/naip/v002/a.tif"
    assert strip_secrets("https://user:pw@host:8443/x?key=1") == "https://host:8443/x"


def test_params_overlay(tmp_path):
    base = tmp_path / "a.yaml"
    base.write_text("sources:\n  naip: {count: 10, bbox: [1, 2, 3, 4]}\n  ucm: {}\nseed: 1\n")
    over = tmp_path / "b.yaml"
    over.write_text("sources:\n  naip: {count: 3}\n")
    merged = load_params([base, over])
    assert merged["sources"]["naip"] == {"count": 3, "bbox": [1, 2, 3, 4]} and merged["seed"] == 1
    assert deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    with pytest.raises(ParamsError, match="missing.yaml"):
        load_params([tmp_path / "missing.yaml"])


def test_reference_naip_item_parses():
    raw = json.loads((REFERENCE / "naip-item-planetary-computer.json").read_text())
    item = pystac.Item.from_dict(raw)
    tile = _tile_ref(item, "image")
    assert tile.year == "2020" and tile.state == "tx" and tile.gsd == 0.6 and tile.epsg == 26914
    assert tile.shape == (12320, 11160) and tile.transform[:3] == (0.6, 0.0, 630384.0)
    assert "?" not in tile.href


def test_signers():
    assert resolve_signer("none")("http://x/a.tif") == "http://x/a.tif"
    assert resolve_signer("geopile.urls:strip_secrets")("http://x/a?sig=1") == "http://x/a"
    with pytest.raises(ValueError, match="unknown signer"):
        resolve_signer("nope")


def test_every_source_file_holds_its_published_facts():
    """One file per source: its class carries every published fact, nothing keyed by name."""
    import sys

    from geopile.sources import SOURCES
    from geopile.sources.base import Source

    for kind, cls in SOURCES.items():
        assert Path(sys.modules[cls.__module__].__file__).stem == kind
        pub = cls.publication
        if pub is None:  # a user's folder or any STAC collection: its facts come from params
            assert cls.user_input is not None or cls.inputs is not Source.inputs
            continue
        assert pub.name and pub.licence and pub.homepage and cls.bibtex
        assert len(set(cls.classes)) == len(cls.classes)
        assert set(cls.split_files.values()) <= set(pub.downloads)
        # something to read: published files, the user's own copy, or its own (NAIP: a STAC API)
        assert pub.downloads or cls.user_input or cls.inputs is not Source.inputs


def test_curate_and_shard_settings_take_their_values_from_params():
    from geopile.settings import check_params

    params = load_params([Path(__file__).resolve().parents[1] / "params.yaml"])
    settings = check_params(params)
    assert settings.curate.min_correlation == 0.9 and settings.shard.max_samples == 10_000
    for block, key in (("curate", "min_correlation"), ("shard", "naip_bands")):
        without = {**params, block: {k: v for k, v in params[block].items() if k != key}}
        with pytest.raises(ParamsError, match=rf"{block}\.{key}: missing"):
            check_params(without)


def test_the_world_reuses_its_last_ports_only_when_the_record_is_sound_and_they_are_free(tmp_path):
    """``run/ports.json`` is the world's own file, but a crash can leave it half-written."""
    import socket

    from geopile.world.servers import free_port, port_free
    from geopile.world.world import PORTS, _last_ports

    record = tmp_path / PORTS
    assert _last_ports(tmp_path) == {}  # never started
    for damaged in ("{\"s3\": {\"s3\": 4", "[1, 2]", "{\"s3\": {\"s3\": \"http\"}}", ""):
        record.write_text(damaged)
        assert _last_ports(tmp_path) == {}, damaged
    port = free_port()
    record.write_text(json.dumps({"s3": {"s3": port}, "stac": {"stac": port + 1}}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        assert _last_ports(tmp_path) == {}  # someone else holds one: new ports, with a warning
    if port_free(port + 1):  # both free again (port + 1 is not ours to hold): they come back
        assert _last_ports(tmp_path) == {"s3": {"s3": port}, "stac": {"stac": port + 1}}



class _Tag:
    def __init__(self, value: int) -> None:
        self.value = value


def _tag_value(tag: _Tag, _: int) -> int:
    return tag.value


def test_a_mapper_tells_shared_objects_apart_even_when_ids_repeat(monkeypatch):
    """Mappers once knew the shared object by id(): a freed one's id, reused by the next, sent
    curate's alignments on Ray the search's object. Every id equal here, as in that case."""
    import geopile.engines
    from geopile.engines import LocalMapper

    monkeypatch.setattr(geopile.engines, "id", lambda obj: 0, raising=False)
    with LocalMapper(1) as mapper:
        assert [list(mapper.map(_tag_value, [0], _Tag(v))) for v in range(3)] == [[0], [1], [2]]
