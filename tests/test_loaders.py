"""Dataset loaders on small files in their real on-disk formats, and the partitioners."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgan.data.loaders import load_airbus, load_city_osm, load_pairs_folder, load_whu, rle_decode
from dgan.data.partition import partition, summary
from dgan.data.shards import DataError

DUBAI = Path(__file__).resolve().parents[2] / "shared" / "data" / "dubai_aerial_buildings"


def _img(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_whu_tif_pairs_load_resized_with_binary_masks(tmp_path: Path) -> None:
    for i in range(2):
        _img(tmp_path / "train" / "image" / f"{i}.tif", np.full((512, 512, 3), 40 * i, np.uint8))
        label = np.zeros((512, 512), np.uint8)
        label[:256] = 255
        _img(tmp_path / "train" / "label" / f"{i}.tif", label)
    pairs = load_whu(tmp_path, "train", 128)
    assert pairs.images.shape == (2, 128, 128, 3) and pairs.masks.shape == (2, 128, 128)
    assert set(np.unique(pairs.masks)) == {0, 1} and pairs.masks[:, :64].all() and not pairs.masks[:, 64:].any()
    (tmp_path / "train" / "label" / "1.tif").unlink()
    with pytest.raises(DataError, match=r"1\.tif"):
        load_whu(tmp_path, "train", 128)


def test_city_osm_rgb_labels_map_to_chosen_classes(tmp_path: Path) -> None:
    label = np.full((64, 64, 3), 255, np.uint8)
    label[:20] = (255, 0, 0)  # building
    label[40:] = (0, 0, 255)  # road
    _img(tmp_path / "berlin1_labels.png", label)
    _img(tmp_path / "berlin1_image.png", np.zeros((64, 64, 3), np.uint8))
    one = load_city_osm(tmp_path, 64, ("building",))
    assert one.masks[0, :20].all() and not one.masks[0, 20:].any() and one.columns["city"] == ["berlin"]
    two = load_city_osm(tmp_path, 64, ("building", "road"))
    assert set(np.unique(two.masks)) == {0, 1, 2} and (two.masks[0, 40:] == 2).all()
    _img(tmp_path / "paris3_image.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(DataError, match=r"paris3_image\.png"):
        load_city_osm(tmp_path, 64)


def test_airbus_rle_is_column_major_one_indexed_and_ored(tmp_path: Path) -> None:
    m = rle_decode("1 3 10 2", (4, 4))  # pixels 0,1,2 and 9,10 in column-major order
    expected = np.zeros(16, np.uint8)
    expected[[0, 1, 2, 9, 10]] = 1
    assert np.array_equal(m, expected.reshape(4, 4).T)
    assert m[0, 0] and m[2, 0] and m[1, 2] and not m[0, 1]
    _img(tmp_path / "train_v2" / "a.jpg", np.zeros((768, 768, 3), np.uint8))
    _img(tmp_path / "train_v2" / "b.jpg", np.zeros((768, 768, 3), np.uint8))
    with open(tmp_path / "train_ship_segmentations_v2.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "EncodedPixels"])
        w.writerow(["a.jpg", f"1 {768 * 24}"])  # the first 24 columns
        w.writerow(["a.jpg", f"{768 * 744 + 1} {768 * 24}"])  # the last 24 columns: a second ship, OR-ed
        w.writerow(["b.jpg", ""])  # no ship
    pairs = load_airbus(tmp_path, 64)
    assert pairs.names == ["a", "b"] and pairs.columns["image_id"] == ["a.jpg", "b.jpg"]
    assert pairs.masks[0][:, 0].all() and pairs.masks[0][:, -1].all() and not pairs.masks[0][:, 30].any()
    assert not pairs.masks[1].any()
    with open(tmp_path / "train_ship_segmentations_v2.csv", "a", newline="") as f:
        csv.writer(f).writerow(["c.jpg", "5 5"])
    with pytest.raises(DataError, match=r"c\.jpg"):
        load_airbus(tmp_path, 64)
    with pytest.raises(DataError, match="outside"):
        rle_decode("10 100", (4, 4))


def test_corrupt_image_error_names_the_file(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "x.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"masks/x\.png"):
        load_pairs_folder(tmp_path, 8)


@pytest.mark.skipif(not DUBAI.exists(), reason="the shared Dubai patches are not beside this checkout")
def test_dubai_patches_load_through_the_generic_folder_loader_with_their_tiles() -> None:
    pairs = load_pairs_folder(DUBAI, 64, names=None)
    assert len(pairs) == 1305 and pairs.images.shape[1:] == (64, 64, 3)
    assert sorted(set(pairs.columns["tile"])) == [str(t) for t in range(1, 9)]
    assert abs(float(pairs.masks.mean()) - 0.132) < 0.02  # SOURCE.md: mean building fraction 0.132


def test_partitions_are_seeded_disjoint_and_complete() -> None:
    stat = np.random.default_rng(0).random(200)
    groups = [str(i % 5) for i in range(200)]
    for how, kw in (("iid", {}), ("size", {}), ("dirichlet", {"stat": stat, "alpha": 0.3}),
                    ("group", {"groups": groups}), ("group", {"groups": groups,
                                                              "node_groups": [["0"], ["1", "2"], ["3"], ["4"]]})):
        parts = partition(200, 4, how, seed=1, **kw)
        flat = sorted(i for p in parts for i in p)
        assert flat == list(range(200)) and all(parts), how
        assert parts == partition(200, 4, how, seed=1, **kw), how
    sizes = [len(p) for p in partition(200, 4, "size")]
    assert max(sizes) >= 3 * min(sizes)
    by_group = partition(200, 4, "group", groups=groups, node_groups=[["0"], ["1", "2"], ["3"], ["4"]])
    assert {groups[i] for i in by_group[1]} == {"1", "2"}
    skewed = partition(200, 4, "dirichlet", seed=0, stat=stat, alpha=0.05)
    means = [float(np.mean(stat[p])) for p in skewed]
    assert max(means) - min(means) > 0.2  # small alpha: nodes see different statistics
    rows = summary(by_group, np.ones((200, 2, 2), np.uint8))
    assert [r["count"] for r in rows] == [40, 80, 40, 40] and rows[0]["building_fraction"] == 1.0
    with pytest.raises(ValueError, match="more than one node"):
        partition(200, 2, "group", groups=groups, node_groups=[["0", "1"], ["1"]])
