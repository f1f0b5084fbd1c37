"""`dgan compare`: runs paired by GAN seed and segmentation seed, on known numbers; bad input refused clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dgan.cli import app
from dgan.compare_runs import CompareError, compare, load_run, parse_run_arg, strict_json


def _seeds(vals: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
    return [{"gan_seed": g, "best_val_iou": v, "iou": t} for g, v, t in vals]


def _results(methods: dict[str, list[tuple[int, float, float]]], test: str = "tile=8", test_size: int = 360,
             val_size: int = 59) -> dict[str, Any]:
    out: dict[str, Any] = {"real_all": {"iou": 0.56, "seeds": [{"iou": 0.56}]},
                           "real_partial": {"iou": 0.42, "per_node": {}}}
    out.update({m: {"iou": sum(t for _, _, t in s) / len(s), "seeds": _seeds(s)} for m, s in methods.items()})
    return {"dataset": "dubai", "resolution": 128, "splits": {"test": test}, "sizes": {"test": test_size,
                                                                                        "val": val_size},
            "methods": out}


def _write(tmp: Path, name: str, results: dict[str, Any]) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results))
    return d


def test_pairs_by_gan_seed_with_known_differences_ratios_and_standard_error(tmp_path: Path) -> None:
    # base: 4 segmenters over 2 GAN seeds (seed s on GAN s mod 2); other: the same layout
    base = _write(tmp_path, "base", _results({"central_gan": [(0, 0.50, 0.40), (1, 0.40, 0.30),
                                                               (0, 0.60, 0.60), (1, 0.40, 0.50)]}))
    other = _write(tmp_path, "other", _results({"dgan": [(0, 0.45, 0.50), (1, 0.50, 0.40),
                                                         (0, 0.55, 0.50), (1, 0.30, 0.20)]}))
    result = compare([load_run(base), load_run(other)], None, None)
    assert result["baseline"] == "base:central_gan"
    (comp,) = result["comparisons"]
    assert comp["segmenter_seeds"] == {"tile=8": [0, 1, 2, 3]} and comp["unpaired_segmenters"] == {}
    g0, g1 = comp["pairs"]
    # GAN 0: val 0.55 -> 0.50, test 0.50 -> 0.50; GAN 1: val 0.40 -> 0.40, test 0.40 -> 0.30
    assert g0["val_base"] == pytest.approx(0.55) and g0["val_other"] == pytest.approx(0.50)
    assert g0["val_ratio"] == pytest.approx(0.50 / 0.55) and g0["test_diff"] == pytest.approx(0.0)
    assert g1["test_diff"] == pytest.approx(-0.10) and g1["test_ratio"] == pytest.approx(0.75)
    assert comp["test"]["mean_diff"] == pytest.approx(-0.05)
    assert comp["test"]["se"] == pytest.approx(0.05)  # std(0, -0.1, ddof 1) / sqrt 2
    assert comp["test"]["min_ratio"] == pytest.approx(0.75) and not comp["test"]["every_pair_met"]
    assert comp["val"]["every_pair_met"] is True  # 0.909 and 1.0
    assert comp["val"]["ahead"] == 0 and comp["test"]["ahead"] == 0 and comp["test"]["behind"] == 1
    low, high = comp["test"]["ci95"]  # t(1 df) = 12.706
    assert low == pytest.approx(-0.05 - 12.706 * 0.05) and high == pytest.approx(-0.05 + 12.706 * 0.05)


def test_runs_with_other_seed_counts_pair_only_the_segmenters_both_ran_on_the_same_gan_seed(tmp_path: Path) -> None:
    base = _write(tmp_path, "base", _results({"dgan": [(0, 0.5, 0.5), (1, 0.5, 0.5), (0, 0.9, 0.9), (1, 0.9, 0.9)]}))
    two = _write(tmp_path, "two", _results({"dgan": [(0, 0.6, 0.6), (1, 0.4, 0.4)]}))
    (comp,) = compare([load_run(base), load_run(two)], None, None)["comparisons"]
    assert comp["segmenter_seeds"] == {"tile=8": [0, 1]} and comp["unpaired_segmenters"] == {"tile=8": [2, 3]}
    assert [p["test_base"] for p in comp["pairs"]] == pytest.approx([0.5, 0.5])  # segmenters 2, 3 left out
    # --gan-seeds 4 against 2: segmenter 2 trained on GAN 2 in one and GAN 0 in the other: not a pair
    four = _write(tmp_path, "four", _results({"dgan": [(0, 0.5, 0.5), (1, 0.5, 0.5), (2, 0.5, 0.5), (3, 0.5, 0.5)]}))
    (comp,) = compare([load_run(base), load_run(four)], None, None)["comparisons"]
    assert comp["segmenter_seeds"] == {"tile=8": [0, 1]}
    # GANs 2 and 3 of the other side found no pair: they might be the ones that collapsed, so no "every pair"
    assert comp["unpaired_gan_seeds"] == {"tile=8": [2, 3]} and comp["test"]["min_ratio"] == pytest.approx(1.0)
    assert comp["test"]["every_pair_met"] is False


def test_runs_on_several_test_sets_pair_within_each_and_pool_the_pairs(tmp_path: Path) -> None:
    a8 = _write(tmp_path, "a8", _results({"central_gan": [(0, 0.5, 0.5), (1, 0.5, 0.5)]}))
    a5 = _write(tmp_path, "a5", _results({"central_gan": [(0, 0.4, 0.2), (1, 0.4, 0.2)]}, test="tile=5"))
    b8 = _write(tmp_path, "b8", _results({"dgan": [(0, 0.6, 0.6), (1, 0.45, 0.45)]}))
    b5 = _write(tmp_path, "b5", _results({"dgan": [(0, 0.5, 0.3)]}, test="tile=5"))
    runs = [load_run(a8, "c"), load_run(a5, "c"), load_run(b8, "d"), load_run(b5, "d")]
    result = compare(runs, None, None)
    assert "2 test sets" in result["warnings"][0]
    (comp,) = result["comparisons"]
    assert [(p["split"], p["gan_seed"]) for p in comp["pairs"]] == [("tile=8", 0), ("tile=8", 1), ("tile=5", 0)]
    assert [p["test_base"] for p in comp["pairs"]] == pytest.approx([0.5, 0.5, 0.2])  # never tile 8 against 5
    assert comp["test"]["pairs"] == 3 and comp["test"]["mean_diff"] == pytest.approx((0.1 - 0.05 + 0.1) / 3)
    assert comp["unpaired_segmenters"] == {"tile=5": [1]}
    # one side on a split the other lacks: said, not paired
    (comp,) = compare(runs[:3], None, None)["comparisons"]
    assert comp["splits_unpaired"] == ["tile=5"] and len(comp["pairs"]) == 2
    assert comp["val"]["min_ratio"] >= 0.9 and comp["val"]["every_pair_met"] is False  # tile 5 was not compared


def test_one_label_twice_on_one_test_set_is_refused_and_other_validation_sets_warned(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", _results({"dgan": [(0, 0.5, 0.5)]}))
    b = _write(tmp_path, "b", _results({"dgan": [(0, 0.5, 0.5)]}))
    with pytest.raises(CompareError, match=r"same label \('x'\) and test set"):
        compare([load_run(a, "x"), load_run(b, "x")], None, None)
    c = _write(tmp_path, "c", _results({"dgan": [(0, 0.5, 0.5)]}, val_size=80))
    assert "validation set of another size" in compare([load_run(a), load_run(c)], None, None)["warnings"][0]
    # a test set of another size (another data version) is another test set: not paired with the first
    d = _write(tmp_path, "d", _results({"dgan": [(0, 0.5, 0.5)]}, test_size=300))
    (comp,) = compare([load_run(a), load_run(d)], None, None)["comparisons"]
    assert comp["pairs"] == [] and len(comp["splits_unpaired"]) == 2


def test_method_filter_and_baseline_choice(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", _results({"dgan": [(0, 0.5, 0.5)], "dgan_last": [(0, 0.4, 0.4)]}))
    b = _write(tmp_path, "b", _results({"central_gan": [(0, 0.25, 0.25)], "dgan": [(0, 0.6, 0.6)]}))
    result = compare([load_run(a), load_run(b)], ["dgan", "central_gan"], "b:central_gan")
    assert result["baseline"] == "b:central_gan"
    assert [c["other"] for c in result["comparisons"]] == ["a:dgan", "b:dgan"]
    assert result["comparisons"][0]["test"]["min_ratio"] == pytest.approx(2.0)
    with pytest.raises(CompareError, match="no run has GAN method 'sync'"):
        compare([load_run(a), load_run(b)], ["sync"], None)
    with pytest.raises(CompareError, match="LABEL:METHOD"):
        compare([load_run(a), load_run(b)], None, "nope")
    with pytest.raises(CompareError, match=r"has no GAN method 'central_gan'.*dgan, dgan_last"):
        compare([load_run(a), load_run(b)], None, "a:central_gan")


def test_missing_malformed_and_foreign_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=r"no results.json"):
        load_run(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_bytes(b"{\"methods\": [1, 2")
    with pytest.raises(CompareError, match="not readable as JSON"):
        load_run(bad)
    (bad / "results.json").write_bytes(b"\xff\xfe not text")
    with pytest.raises(CompareError, match="not readable as JSON"):
        load_run(bad)
    (bad / "results.json").write_text(json.dumps({"steps": 5}))
    with pytest.raises(CompareError, match="no 'methods'"):
        load_run(bad)
    # a method whose seeds are junk is not a GAN method, and the run has none
    junk = _write(tmp_path, "junk", {**_results({}), "methods": {"dgan": {"seeds": ["x", 3]}}})
    with pytest.raises(CompareError, match="no GAN methods"):
        compare([load_run(junk)], None, None)


def test_label_syntax() -> None:
    assert parse_run_arg("fp32=runs/a") == ("fp32", Path("runs/a"))
    assert parse_run_arg("runs/a") == (None, Path("runs/a"))
    assert parse_run_arg("runs/x=y/a") == (None, Path("runs/x=y/a"))  # a path with '=' in a folder name


def test_cli_prints_the_tables_writes_json_and_exits_2_on_bad_input(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", _results({"central_gan": [(0, 0.5, 0.5), (1, 0.4, 0.4)]}))
    b = _write(tmp_path, "b", _results({"dgan": [(0, 0.5, 0.45), (1, 0.5, 0.2)]}))
    runner = CliRunner()
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, ["compare", f"central={a}", f"dgan={b}", "--json", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps at the terminal's width
    assert "dgan:dgan against central:central_gan" in text
    assert "every pair >= 0.9x: yes" in text and "every pair >= 0.9x: no" in text  # val 1.0, 1.25; test 0.9, 0.5
    saved = json.loads(out.read_text())
    assert saved["comparisons"][0]["test"]["min_ratio"] == pytest.approx(0.5)
    assert saved["comparisons"][0]["val"]["mean_diff"] == pytest.approx(0.05)
    assert "real_all 0.560" in text
    res = runner.invoke(app, ["compare", str(a), str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no results.json" in " ".join(res.output.split())


def test_a_zero_base_gives_a_null_ratio_in_strict_json(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", _results({"central_gan": [(0, 0.0, 0.0)]}))
    b = _write(tmp_path, "b", _results({"dgan": [(0, 0.2, 0.1)]}))
    result = compare([load_run(a), load_run(b)], None, None)
    assert math.isnan(result["comparisons"][0]["pairs"][0]["test_ratio"])
    text = json.dumps(strict_json(result), allow_nan=False)
    assert json.loads(text)["comparisons"][0]["pairs"][0]["test_ratio"] is None


def test_hostile_segmenter_entries_are_left_out_in_place_with_a_warning(tmp_path: Path) -> None:
    base = _write(tmp_path, "base", _results({"dgan": [(0, 0.5, 0.5), (1, 0.5, 0.5), (0, 0.5, 0.5)]}))
    hostile = _results({"dgan": [(0, 0.6, 0.6), (1, 0.6, 0.6), (0, 0.6, 0.6)]})
    # seed 0 junk, seed 1 a string IoU, seed 2 fine: seed 2 must still pair with the base's seed 2
    hostile["methods"]["dgan"]["seeds"][0] = "x"
    hostile["methods"]["dgan"]["seeds"][1]["iou"] = "0.9"
    other = _write(tmp_path, "other", hostile)
    result = compare([load_run(base), load_run(other)], None, None)
    (comp,) = result["comparisons"]
    assert comp["segmenter_seeds"] == {"tile=8": [2]} and comp["unpaired_segmenters"] == {"tile=8": [0, 1]}
    assert comp["pairs"][0]["test_other"] == pytest.approx(0.6)
    assert any("segmenter seed(s) [0, 1]" in w for w in result["warnings"])
    for bad in ({"gan_seed": 0}, {"gan_seed": True, "iou": 0.5}, {"gan_seed": 0, "iou": float("inf")},
                {"gan_seed": "0", "iou": 0.5}, {"iou": 0.3}):
        doc = _results({"dgan": [(0, 0.5, 0.5)]})
        doc["methods"]["dgan"]["seeds"].append(bad)
        path = tmp_path / f"h{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(doc))  # inf is written as Infinity, which Python reads back
        (comp,) = compare([load_run(base), load_run(path)], None, None)["comparisons"]
        assert comp["segmenter_seeds"] == {"tile=8": [0]}, bad


def test_hostile_top_level_fields_are_refused_clearly(tmp_path: Path) -> None:
    for doc, why in (({**_results({}), "sizes": "x"}, "'sizes' is not an object"),
                     ({**_results({}), "splits": [1]}, "'splits' is not an object")):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(CompareError, match=why):
            load_run(path)
    unhashable = _write(tmp_path, "u", {**_results({"dgan": [(0, 0.5, 0.5)]}), "splits": {"test": ["tile=8"]}})
    ok = _write(tmp_path, "ok", _results({"dgan": [(0, 0.5, 0.5)]}))
    assert compare([load_run(ok), load_run(unhashable)], None, None)["comparisons"][0]["pairs"] == []
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CompareError, match="not readable as JSON"):
        load_run(deep)
    with pytest.raises(CompareError, match="cannot hold ':'"):
        load_run(ok, "a:b")


def test_runs_without_gan_methods_are_named_and_nothing_to_compare_is_an_error(tmp_path: Path) -> None:
    base = _write(tmp_path, "base", _results({"dgan": [(0, 0.5, 0.5)], "central_gan": [(0, 0.4, 0.4)]}))
    old = _write(tmp_path, "old", {**_results({}), "methods": {"dgan": {"iou": 0.4, "seeds": [{"iou": 0.4}]}}})
    result = compare([load_run(base), load_run(old)], None, None)
    assert any("old" in w and "no GAN method" in w for w in result["warnings"])
    with pytest.raises(CompareError, match="nothing to compare"):
        compare([load_run(base), load_run(old)], ["dgan"], None)


def test_the_dataset_counts_by_its_folder_name_and_other_feedback_modes_are_warned(tmp_path: Path) -> None:
    a = _results({"central_gan": [(0, 0.5, 0.5)]})
    b = _results({"dgan": [(0, 0.5, 0.5)]})
    a["dataset"], b["dataset"] = "../shared/data/dubai", "/work/shared/data/dubai"
    a["methods"]["central_gan"]["feedback"], b["methods"]["dgan"]["feedback"] = "adversarial", "l1"
    result = compare([load_run(_write(tmp_path, "a", a)), load_run(_write(tmp_path, "b", b))], None, None)
    assert len(result["comparisons"][0]["pairs"]) == 1
    assert any("other feedback modes (l1 against adversarial)" in w for w in result["warnings"])


def test_cli_errors_inside_the_comparison_and_an_unwritable_json_exit_2(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", _results({"central_gan": [(0, 0.5, 0.5)]}))
    b = _write(tmp_path, "b", _results({"dgan": [(0, 0.5, 0.45)]}))
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(a), str(b), "--baseline", "nope"])
    assert res.exit_code == 2 and "LABEL:METHOD" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["compare", str(a), str(b), "--json", str(tmp_path)])  # a folder
    assert res.exit_code == 2 and "could not write" in res.output


def test_runs_made_by_other_code_are_warned(tmp_path: Path) -> None:
    a = _results({"central_gan": [(0, 0.5, 0.5)]})
    b = _results({"dgan": [(0, 0.5, 0.5)]})
    code = {"dgan": "0.1.0", "commit": "a" * 12, "modified": False, "torch": "2.13.0"}
    a["code"], b["code"] = code, {**code, "commit": "b" * 12}
    runs = [load_run(_write(tmp_path, "a", a)), load_run(_write(tmp_path, "b", b))]
    assert any(w.startswith("made by other code") and "commit aaaa" in w for w in compare(runs, None, None)["warnings"])
    b["code"] = code
    runs[1] = load_run(_write(tmp_path, "c", b))
    assert not any("other code" in w for w in compare(runs, None, None)["warnings"])
