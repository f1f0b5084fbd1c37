"""`--data KIND:PATH` everywhere, `dgan data import/show`, on small files in each dataset's real format."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dgan.cli import app
from dgan.data.importer import as_pairs_folder
from dgan.data.loaders import load_airbus, load_pairs_folder
from dgan.data.shards import DataError, resolve_data
from dgan.data.spec import DataSpec, binary, load_data, parse_data_spec
from dgan.networks import ModelConfig
from dgan.training.discriminator import PairSampler

AIRBUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "airbus_ship_sample"
# SOURCE.md's ship pixels per image with ships, decoded at 768 x 768.
AIRBUS_SHIP_PIXELS = {"00b21150c": 21158, "00b872d8e": 58, "0a1a58833": 5561, "0a1b7d6ec": 377}


def _said(res: object) -> str:
    """A CLI result's output with rich's line wrapping undone."""
    return " ".join(str(getattr(res, "output", "")).split())


def _img(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _whu(root: Path) -> Path:
    for split in ("train", "val", "test"):
        for i in range(2):
            _img(root / split / "image" / f"{i}.tif", np.full((64, 64, 3), 30 * i + 10, np.uint8))
            label = np.zeros((64, 64), np.uint8)
            label[: 16 * (i + 1)] = 255
            _img(root / split / "label" / f"{i}.tif", label)
    return root


def _city_osm(root: Path) -> Path:
    for city, n in (("berlin", 2), ("paris", 1)):
        for k in range(1, n + 1):
            label = np.full((64, 64, 3), 255, np.uint8)
            label[:20] = (255, 0, 0)  # building
            label[40:] = (0, 0, 255)  # road
            label[30:34] = (12, 200, 7)  # a stray colour: background
            _img(root / city / f"{city}{k}_labels.png", label)
            _img(root / city / f"{city}{k}_image.png", np.full((64, 64, 3), 90, np.uint8))
    return root


def _airbus(root: Path) -> Path:
    _img(root / "train_v2" / "a.jpg", np.zeros((768, 768, 3), np.uint8))
    _img(root / "train_v2" / "b.jpg", np.zeros((768, 768, 3), np.uint8))
    with open(root / "train_ship_segmentations_v2.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["ImageId", "EncodedPixels"], ["a.jpg", f"1 {768 * 24}"], ["b.jpg", ""]])
    return root


def test_data_specs_parse_every_kind_and_refuse_bad_ones_in_one_line() -> None:
    assert parse_data_spec("scenes") == DataSpec("scenes")
    assert parse_data_spec("whu:/d/whu:val") == DataSpec("whu", Path("/d/whu"), "val")
    assert parse_data_spec("whu:/d/whu") == DataSpec("whu", Path("/d/whu"))
    assert parse_data_spec("city-osm:/d/osm:berlin,paris") == DataSpec("city-osm", Path("/d/osm"), "berlin,paris")
    assert parse_data_spec("airbus:/d/ships") == DataSpec("airbus", Path("/d/ships"))
    assert parse_data_spec("airbus:~/ships").path == Path.home() / "ships"  # the shell leaves this ~ alone
    assert parse_data_spec("folder:/d/pairs") == DataSpec("folder", Path("/d/pairs"))
    assert parse_data_spec("/d/node0.json") == DataSpec("folder", Path("/d/node0.json"))
    for bad, says in (("whu:/d:bogus", "WHU split"), ("nothere:/x", "unknown kind"), ("airbus:", "needs a path"),
                      ("", "empty"), ("airbus:/d:0", "positive number"), ("airbus:/d:many", "positive number")):
        with pytest.raises(DataError, match=says):
            parse_data_spec(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_data("whu:/no/such/folder", 32)


def test_every_data_kind_loads_from_its_real_format_with_its_group_column(tmp_path: Path) -> None:
    whu = load_data(f"whu:{_whu(tmp_path / 'whu')}:all", 32)
    assert len(whu) == 6 and whu.columns["split"] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    assert len(set(whu.names)) == 6 and set(np.unique(whu.masks)) == {0, 1}
    assert len(load_data(f"whu:{tmp_path / 'whu'}:val", 32)) == 2
    # by default never the published test split: a node or segmenter that trains on it would spoil its scores
    assert set(load_data(f"whu:{tmp_path / 'whu'}", 32).columns["split"]) == {"train", "val"}
    assert len(load_data(f"airbus:{_airbus(tmp_path / 'ships-n')}:1", 32)) == 1
    osm = load_data(f"city-osm:{_city_osm(tmp_path / 'osm')}", 32)
    assert osm.classes == ("background", "building", "road") and osm.columns["city"] == ["berlin"] * 2 + ["paris"]
    assert set(np.unique(osm.masks)) == {0, 1, 2} and (osm.masks[:, 16, :] == 0).all()  # the stray colour
    assert load_data(f"city-osm:{tmp_path / 'osm'}:paris", 32).names == ["paris1"]
    with pytest.raises(DataError, match="no City-OSM city 'rome'"):
        load_data(f"city-osm:{tmp_path / 'osm'}:rome", 32)
    ships = load_data(f"airbus:{_airbus(tmp_path / 'ships')}", 32)
    assert ships.classes == ("background", "ship") and ships.columns["image_id"] == ["a.jpg", "b.jpg"]
    assert ships.masks[0][:, 0].all() and not ships.masks[1].any()
    scenes = load_data("scenes", 32, count=5)
    assert len(scenes) == 5 and np.array_equal(resolve_data("scenes", 32, count=5)[1], scenes.masks)
    shard = tmp_path / "node0.json"
    shard.write_text(json.dumps({"kind": "scenes", "seeds": [1, 2], "size": 32}))
    assert len(load_data(str(shard), 32)) == 2
    shard.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"node0\.json"):
        load_data(str(shard), 32)


def test_import_writes_a_pairs_folder_that_reloads_with_classes_and_groups(tmp_path: Path) -> None:
    runner = CliRunner()
    src = _city_osm(tmp_path / "osm")
    res = runner.invoke(app, ["data", "import", "city-osm", str(src), str(tmp_path / "osm-pairs"), "--size", "32"])
    assert res.exit_code == 0, res.output
    back = load_pairs_folder(tmp_path / "osm-pairs", 32)
    direct = load_data(f"city-osm:{src}", 32)
    assert back.classes == direct.classes and np.array_equal(back.masks, direct.masks)
    assert back.columns["city"] == direct.columns["city"] and back.names == direct.names
    assert np.array_equal(binary(back, "road").masks, (direct.masks == 2).astype(np.uint8))
    res = runner.invoke(app, ["data", "import", "whu", str(_whu(tmp_path / "whu")), str(tmp_path / "whu-pairs"),
                              "--size", "32", "--split", "test"])
    assert res.exit_code == 0 and "split" in _said(res)
    whu = load_pairs_folder(tmp_path / "whu-pairs", 32)
    assert whu.columns["split"] == ["test", "test"] and whu.classes == ("background", "building")
    again = runner.invoke(app, ["data", "import", "whu", str(tmp_path / "whu"), str(tmp_path / "whu-pairs")])
    assert again.exit_code == 2 and "not an empty folder" in _said(again)  # nothing is overwritten
    wrong = runner.invoke(app, ["data", "import", "whu", str(tmp_path / "osm"), str(tmp_path / "w2")])
    assert wrong.exit_code == 2 and "WHU split folder" in _said(wrong)
    res = runner.invoke(app, ["data", "import", "airbus", str(_airbus(tmp_path / "ships")), str(tmp_path / "sp"),
                              "--size", "32"])
    assert res.exit_code == 0 and load_pairs_folder(tmp_path / "sp", 32).classes == ("background", "ship")
    unknown = runner.invoke(app, ["data", "import", "kitti", str(src), str(tmp_path / "k")])
    assert unknown.exit_code == 2 and "unknown dataset kind" in _said(unknown)


def test_folder_commands_import_other_kinds_once_and_binary(tmp_path: Path) -> None:
    src = _city_osm(tmp_path / "osm")
    folder = as_pairs_folder(f"city-osm:{src}", tmp_path / "run", 32)
    assert folder is not None and (folder / "manifest.csv").exists()
    binary_set = load_pairs_folder(folder, 32)
    assert set(np.unique(binary_set.masks)) == {0, 1} and binary_set.classes == ("background", "building")
    assert as_pairs_folder(f"city-osm:{src}", tmp_path / "run", 32) == folder  # imported once
    assert as_pairs_folder(None, tmp_path, 32) is None and as_pairs_folder("scenes", tmp_path, 32) is None
    (tmp_path / "shard.json").write_text("{}")
    with pytest.raises(DataError, match="pairs folder"):
        as_pairs_folder(str(tmp_path / "shard.json"), tmp_path, 32)


def test_a_bad_classes_json_or_mask_value_names_the_file(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "x.png", np.zeros((8, 8, 3), np.uint8))
    _img(tmp_path / "masks" / "x.png", np.full((8, 8), 3, np.uint8))
    (tmp_path / "classes.json").write_text('{"classes": ["background", "building", "road"]}')
    with pytest.raises(DataError, match=r"masks/x\.png: value 3"):
        load_pairs_folder(tmp_path, 8)
    (tmp_path / "classes.json").write_text('{"classes": "building"}')
    with pytest.raises(DataError, match=r"classes\.json"):
        load_pairs_folder(tmp_path, 8)


@pytest.mark.skipif(not AIRBUS.exists(), reason="the shared Airbus sample is not beside this checkout")
def test_the_real_airbus_sample_decodes_to_its_listed_ship_pixels_and_shows(tmp_path: Path) -> None:
    full = load_airbus(AIRBUS, 768)
    pixels = {name: int(m.sum()) for name, m in zip(full.names, full.masks, strict=True)}
    assert {k: v for k, v in pixels.items() if v} == AIRBUS_SHIP_PIXELS and len(pixels) == 7
    res = CliRunner().invoke(app, ["data", "show", f"airbus:{AIRBUS}", "--size", "256", "--grid",
                                   str(tmp_path / "grid.png"), "--json", str(tmp_path / "show.json")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "show.json").read_text())
    assert info["pairs"] == 7 and info["images_without_foreground"] == 3 and info["group_column"] == "image_id"
    assert info["classes"][1]["name"] == "ship" and 0 < info["classes"][1]["pixel_share"] < 0.01
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (7 * 256, 2 * 256)
    bad = CliRunner().invoke(app, ["data", "show", f"airbus:{tmp_path}"])
    assert bad.exit_code == 2 and "train_ship_segmentations_v2.csv" in _said(bad)


@pytest.mark.skipif(not AIRBUS.exists(), reason="the shared Airbus sample is not beside this checkout")
def test_the_real_airbus_sample_feeds_a_node_for_a_few_batches(serve_one_node: Any) -> None:
    images, masks = resolve_data(f"airbus:{AIRBUS}", 32)
    cfg = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)
    service, _ = serve_one_node(cfg, 3, "ships", images, masks, pipeline=1)
    assert service.trainer.step == 3 and service.nodes["ships"].feedbacks >= 3


def _old_sampler_batch(images: np.ndarray, masks: np.ndarray, size: int, seed: int, n: int) -> tuple[np.ndarray, ...]:
    """PairSampler.batch as it was (df3dc98), kept here so the uniform stream can be checked against it."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(images), n)
    h, w = images.shape[1:3]
    ims, ms = np.empty((n, size, size, 3), np.uint8), np.empty((n, size, size), np.uint8)
    for j, i in enumerate(idx):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        im, m = images[i, y:y + size, x:x + size], masks[i, y:y + size, x:x + size]
        if rng.random() < 0.5:
            im, m = im[:, ::-1], m[:, ::-1]
        if rng.random() < 0.5:
            im, m = im[::-1], m[::-1]
        ims[j], ms[j] = im, m
    return ims, ms


def test_positive_crops_find_sparse_targets_and_leave_the_uniform_stream_alone() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 96, 96, 3), dtype=np.uint8)
    masks = np.zeros((8, 96, 96), np.uint8)
    masks[0, 70:73, 10:14] = 1  # one small ship in one image of eight
    for share in (None, 0.0):  # off: exactly the draws of the sampler before positive crops existed
        got = PairSampler(images, masks, 32, seed=1, positive_share=share).batch(16)
        want = _old_sampler_batch(images, masks, 32, seed=1, n=16)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    hits = lambda ms: float((ms.reshape(len(ms), -1) > 0).any(1).mean())  # noqa: E731
    assert hits(PairSampler(images, masks, 32, seed=2).batch(400)[1]) < 0.05
    half = hits(PairSampler(images, masks, 32, seed=2, positive_share=0.5).batch(400)[1])
    assert 0.4 < half < 0.65  # about half on the ship, and empty crops stay in the stream
    assert hits(PairSampler(images, masks, 32, seed=3, positive_share=1.0).batch(50)[1]) == 1.0
    with pytest.raises(ValueError, match="positive_share"):
        PairSampler(images, masks, 32, positive_share=1.5)


@pytest.mark.skipif(not AIRBUS.exists(), reason="the shared Airbus sample is not beside this checkout")
def test_positive_crops_on_the_real_airbus_sample_put_ships_in_most_crops() -> None:
    pairs = load_airbus(AIRBUS, 768)
    count = lambda s: float((s.batch(200)[1].reshape(200, -1) > 0).any(1).mean())  # noqa: E731
    uniform = count(PairSampler(pairs.images, pairs.masks, 128, seed=0))
    focused = count(PairSampler(pairs.images, pairs.masks, 128, seed=0, positive_share=0.7))
    assert uniform < 0.15 and focused > 0.6, (uniform, focused)


def test_positive_crop_settings_out_of_range_are_refused_at_once(tmp_path: Path) -> None:
    from dgan.experiment import ExperimentConfig, ExperimentSetupError
    from dgan.segment import SegConfig

    res = CliRunner().invoke(app, ["node", "--name", "dept", "--positive-crops", "2", "--broker", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "--positive-crops" in _said(res)
    res = CliRunner().invoke(app, ["node", "--name", "dept", "--transfer-every", "-1", "--broker", "tcp://127.0.0.1:1"])
    assert res.exit_code == 2 and "--transfer-every" in _said(res)
    with pytest.raises(ExperimentSetupError, match="positive_share"):
        ExperimentConfig(out=tmp_path, seg=SegConfig(positive_share=-0.1))
