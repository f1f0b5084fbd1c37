"""The node's label judge: a local segmenter's IoU on the fakes is a real measure of label alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dgan.cpu_features as cpu
from dgan.data.scenes import make_scenes
from dgan.training.judge import LabelJudge, TransferJudge


def _wire(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))  # uint8 (B, 3, H, W), as fakes travel


def test_judge_scores_aligned_images_high_and_blank_or_mismatched_ones_low() -> None:
    torch.set_num_threads(1)
    ims, ms = make_scenes(range(32), 32)
    judge = LabelJudge(seed=0, lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(150):
        idx = rng.integers(0, len(ims), 8)
        judge.train_step(ims[idx], ms[idx])
    test_ims, test_ms = make_scenes(range(500, 516), 32)
    aligned = judge.label_iou(_wire(test_ims), test_ms)
    grey = judge.label_iou(_wire(np.full_like(test_ims, 128)), test_ms)
    shuffled = judge.label_iou(_wire(test_ims), test_ms[::-1].copy())  # images drawn for other masks
    assert aligned > 0.3, aligned
    assert grey < 0.1 and shuffled < aligned / 2, (grey, shuffled, aligned)
    assert judge.steps == 150


def _trained_transfer(fakes: np.ndarray, fake_masks: np.ndarray, reals: np.ndarray, masks: np.ndarray) -> float:
    judge = TransferJudge(reals, masks, every=len(fakes) // 8, steps=150, keep=32, seed=0)
    verdicts = [judge.remember(_wire(fakes[i:i + 8]), fake_masks[i:i + 8]) for i in range(0, len(fakes), 8)]
    assert verdicts[:-1] == [None] * (len(verdicts) - 1) and verdicts[-1] is not None
    return verdicts[-1]


def test_transfer_judge_scores_realistic_fakes_high_and_off_colour_ones_low() -> None:
    """The failure the label judge misses: buildings drawn where the masks say, in colours no real image has."""
    torch.set_num_threads(1)
    fakes, fake_masks = make_scenes(range(32), 32)  # stand-ins for good fakes: scenes like the node's own
    reals, masks = make_scenes(range(500, 532), 32)
    good = _trained_transfer(fakes, fake_masks, reals, masks)
    off = (255 - fakes)[..., ::-1].copy()  # the same layouts, inverted and with red and blue swapped
    off_colour = _trained_transfer(off, fake_masks, reals, masks)
    misaligned = _trained_transfer(fakes, fake_masks[::-1].copy(), reals, masks)  # drawn for other masks
    assert good > 0.2, good  # guessing "building" everywhere scores 0.12 on these crops
    assert off_colour < good / 2 and misaligned < good / 2, (off_colour, misaligned, good)


def test_transfer_judge_gives_a_verdict_every_n_batches_keeps_the_last_fakes_and_leaves_torch_rng_alone() -> None:
    reals, masks = make_scenes(range(4), 16)

    def feed(judge: TransferJudge) -> list[float | None]:
        torch.manual_seed(3)
        verdicts = [judge.remember(_wire(reals[:2]), masks[:2] * (i % 2)) for i in range(6)]
        assert torch.equal(torch.rand(4), expected)  # the node's own stream (D's dropout) is not moved
        return verdicts

    torch.manual_seed(3)
    expected = torch.rand(4)
    judge = TransferJudge(reals, masks, every=3, steps=5, keep=5, batch=2, seed=1)
    verdicts = feed(judge)
    assert [v is not None for v in verdicts] == [False, False, True, False, False, True]
    assert all(0.0 <= v <= 1.0 for v in verdicts if v is not None) and judge.verdicts == 2
    assert len(judge.fakes) == len(judge.masks) == 5  # the last 5 samples of the window's 6, not all 12
    assert judge.window is None
    again = TransferJudge(reals, masks, every=3, steps=5, keep=5, batch=2, seed=1)
    assert feed(again) == verdicts  # a seed makes it repeatable
    torch.manual_seed(99)  # ... whatever the node's own stream holds
    other = TransferJudge(reals, masks, every=3, steps=5, keep=5, batch=2, seed=1)
    assert [other.remember(_wire(reals[:2]), masks[:2] * (i % 2)) for i in range(6)] == verdicts


def test_transfer_judge_spreads_its_training_over_the_window_on_that_windows_fakes_alone() -> None:
    """A verdict's 60 steps at once held a 128 px node up for seconds, and its next feedback came too stale."""
    reals, masks = make_scenes(range(4), 16)
    judge = TransferJudge(reals, masks, every=4, steps=10, keep=8, batch=2, seed=0)
    trained, held = [], []
    for k in range(8):
        verdict = judge.remember(_wire(reals[:2]), masks[:2])
        held.append(len(judge.fakes))
        if k % 4 < 3:
            assert verdict is None and judge.window is not None
            trained.append(judge.window.steps)
        else:
            assert verdict is not None and judge.window is None
    assert trained == [2, 5, 7] * 2  # 10 steps per window, a share after each batch, never all in one
    assert held == [2, 4, 6, 8] * 2  # a new window starts from its own fakes, not the last window's
    assert judge.verdicts == 2


def test_transfer_judge_refuses_bad_settings() -> None:
    reals, masks = make_scenes(range(2), 16)
    for bad in ({"every": 0}, {"steps": 0}, {"keep": 0}, {"batch": 0}):
        with pytest.raises(ValueError):
            TransferJudge(reals, masks, **bad)
    with pytest.raises(ValueError, match="non-empty"):
        TransferJudge(reals[:0], masks[:0])
    with pytest.raises(ValueError, match="matching"):
        TransferJudge(reals, masks[:1])


def test_a_bf16_judge_runs_its_forward_passes_in_bf16_and_still_learns_the_labels() -> None:
    torch.set_num_threads(1)
    ims, ms = make_scenes(range(32), 32)
    test_ims, test_ms = make_scenes(range(500, 516), 32)
    scores = {}
    for precision in ("fp32", "bf16"):
        judge = LabelJudge(seed=0, lr=3e-3, precision=precision)
        dtypes: list[torch.dtype] = []
        judge.model.register_forward_hook(lambda _m, _i, out, seen=dtypes: seen.append(out.dtype))
        rng = np.random.default_rng(0)
        for _ in range(150):
            idx = rng.integers(0, len(ims), 8)
            judge.train_step(ims[idx], ms[idx])
        scores[precision] = judge.label_iou(_wire(test_ims), test_ms)
        assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert all(p.dtype == torch.float32 for p in judge.model.parameters())  # autocast, not a cast model
    assert scores["bf16"] > 0.3 and abs(scores["bf16"] - scores["fp32"]) < 0.15, scores


def test_a_judge_refuses_a_precision_it_cannot_run() -> None:
    reals, masks = make_scenes(range(2), 16)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        LabelJudge(precision="auto")  # the node resolves auto before it builds its judges
    with pytest.raises(ValueError, match="fp32 or bf16"):
        TransferJudge(reals, masks, precision="half")


def test_a_node_builds_its_judges_in_the_precision_its_d_resolved_to(serve_one_node) -> None:  # type: ignore[no-untyped-def]
    from dgan.networks import ModelConfig

    ims, ms = make_scenes(range(8), 32)
    model = ModelConfig(image_size=32, g_width=8, d_width=8)
    for precision, native, resolved in (("fp32", True, "fp32"), ("bf16", False, "bf16"), ("auto", True, "bf16"),
                                        ("auto", False, "fp32")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cpu, "native_bf16", lambda flags=None, native=native: native)
            _, node = serve_one_node(model, 2, "n", ims, ms, judge=True, precision=precision)
        assert node.trainer.precision == node.judge.precision == node.transfer.precision == resolved
