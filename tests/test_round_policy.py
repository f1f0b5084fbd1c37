"""The async/sync round policy, case by case, in-process: no round waits for an answer that cannot come."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dgan import protocol as P
from dgan.networks import ModelConfig
from dgan.training.checkpoints import load_checkpoint
from dgan.training.generator import GeneratorTrainer, TrainConfig
from dgan.transport.inproc import InProcessHub
from nodes.generator_service import GeneratorService, ServiceConfig
from nodes.round_policy import Action, RoundPolicy
from tests.conftest import feedback_for, one_node_service


def test_async_serves_every_request_and_steps_every_update_every_feedbacks() -> None:
    p = RoundPolicy("async", update_every=2)
    assert all(p.request("a", i) == Action.SERVE for i in range(5))
    assert not p.feedback("a", pending=1) and p.feedback("b", pending=2)


def test_buffered_async_steps_once_per_member_node_and_a_departure_shrinks_the_buffer() -> None:
    p = RoundPolicy("async", update_every=0)
    for n in "abc":
        assert p.request(n, n) == Action.SERVE  # never waits: async
    assert p.buffer == 3
    assert not p.feedback("a", pending=1) and not p.feedback("a", pending=2)  # any node's feedback counts
    assert p.feedback("b", pending=3)
    assert not p.leave("c", pending=1)  # one feedback pending: not yet the 2 the smaller buffer wants
    assert p.buffer == 2 and p.leave("b", pending=1)  # now 1 pending fills a buffer of 1: step
    assert not p.leave("a", pending=0)  # nothing pending: no step, and the buffer never drops below 1
    assert p.buffer == 1


def test_sync_serves_each_member_once_per_round_and_closes_when_all_fed_back() -> None:
    p = RoundPolicy("sync")
    for n in "ab":
        assert p.request(n, f"{n}1") == Action.SERVE
        p.was_served(n)
    assert p.request("a", "a2") == Action.DEFER  # a second request waits for the next round
    assert not p.feedback("a", pending=1)
    assert p.feedback("b", pending=2)
    assert p.next_round() == [("a", "a2")] and p.rounds == 1 and not p.served


def test_sync_a_member_that_leaves_closes_the_round_and_rejoins_with_its_next_request() -> None:
    p = RoundPolicy("sync")
    for n in "abc":
        p.request(n, n)
        p.was_served(n)
    p.request("c", "c2")  # deferred: leaving drops it too
    assert not p.feedback("a", pending=1) and not p.feedback("b", pending=2)
    assert p.leave("c")  # the service calls leave() for each reason: see the GeneratorService tests below
    assert p.next_round() == []
    assert p.request("c", "c3") == Action.SERVE  # it rejoins with its next request


def test_sync_an_answer_to_an_earlier_rounds_fakes_does_not_answer_this_round() -> None:
    p = RoundPolicy("sync")
    for n in "ab":
        p.request(n, n)
        p.was_served(n)
    assert not p.feedback("a", 1) and p.feedback("b", 2)
    p.next_round()
    p.request("a", "a2")
    p.was_served("a")
    assert not p.feedback("b", 1)  # b was not served this round: a late or duplicate answer
    assert p.fed_back == set()


def test_sync_a_member_served_and_silent_past_the_timeout_is_overdue() -> None:
    p = RoundPolicy("sync")
    for n in "ab":
        p.request(n, n)
        p.was_served(n, now=100.0)
    p.feedback("a", 1)
    assert p.overdue(150.0, timeout=60.0) == [] and p.overdue(161.0, timeout=60.0) == ["b"]
    assert RoundPolicy("async").overdue(1e9, 1.0) == []


def test_sync_a_round_with_no_member_left_does_not_close_on_nothing() -> None:
    p = RoundPolicy("sync")
    p.request("a", 1)
    p.was_served("a")
    assert not p.leave("a") and not p.round_complete()


def test_sync_the_deferred_queue_is_bounded_in_total_and_per_node() -> None:
    p = RoundPolicy("sync", max_deferred=3, max_deferred_per_node=2)
    for n in "abc":
        p.request(n, 0)
        p.was_served(n)
    assert [p.request("a", i) for i in range(3)] == [Action.DEFER, Action.DEFER, Action.REFUSE]
    assert p.request("b", 0) == Action.DEFER
    assert p.request("c", 0) == Action.REFUSE  # 3 waiting in all
    assert len(p.deferred) == 3


def test_async_leaving_never_steps() -> None:
    p = RoundPolicy("async")
    p.request("a", 1)
    assert not p.leave("a")


def test_unknown_modes_and_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        RoundPolicy("rounds")
    with pytest.raises(ValueError):
        RoundPolicy("sync", update_every=-2)  # -1 is the staleness-aware buffer
    with pytest.raises(ValueError):
        RoundPolicy("async", max_deferred=-1)


# ---- the same cases through the real GeneratorService (in-process transport, scripted nodes)

def _sync_service(tmp_path: Path, names: tuple[str, ...] = ("a", "b"), max_bad: int = 50,
                  ) -> tuple[GeneratorService, dict[str, P.Message]]:
    from dgan import protocol as P
    hub = InProcessHub()
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4),
                               TrainConfig(steps=100, mode="sync", fake_dtype="float32"))
    service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(out=tmp_path, sample_every=0,
                                                                            checkpoint_every=0,
                                                                            max_bad_messages=max_bad))
    links = {n: hub.node_link(n) for n in names}
    masks = np.zeros((1, 16, 16), np.uint8)
    fakes = {}
    for n, link in links.items():
        service.handle(n, P.make(P.Kind.HELLO, n, meta={"role": "node", "dataset_size": 1}))
        assert link.recv(1).kind == P.Kind.WELCOME
        service.handle(n, P.make(P.Kind.FAKE_REQUEST, n, tensors={"masks": masks}))
        fakes[n] = link.recv(1)
        assert fakes[n].kind == P.Kind.FAKES
    return service, fakes


def test_service_sync_round_closes_when_a_members_feedback_is_refused(tmp_path: Path) -> None:
    service, fakes = _sync_service(tmp_path)
    service.handle("a", feedback_for(fakes["a"]))
    assert service.trainer.step == 0
    service.handle("b", feedback_for(fakes["b"], good=False))  # wrong shape: REJECTED, b leaves the round
    assert service.trainer.step == 1


def test_service_sync_round_closes_when_a_members_fakes_were_undeliverable(tmp_path: Path) -> None:
    service, fakes = _sync_service(tmp_path)
    service.handle("a", feedback_for(fakes["a"]))
    service.handle("", P.error("broker", P.ErrorCode.UNREACHABLE, "gone", reply_to=fakes["b"].msg_id, node="b"))
    assert service.trainer.step == 1 and service.counters["released_undeliverable"] == 1


def test_service_sync_round_closes_when_a_member_is_ignored_for_bad_messages(tmp_path: Path) -> None:
    service, fakes = _sync_service(tmp_path, max_bad=2)
    service.handle("a", feedback_for(fakes["a"]))
    for _ in range(2):  # masks of the wrong size: hostile
        service.handle("b", P.make(P.Kind.FAKE_REQUEST, "b", tensors={"masks": np.zeros((1, 8, 8), np.uint8)}))
    assert service.trainer.step == 1


def test_service_sync_round_closes_when_a_member_departs(tmp_path: Path) -> None:
    service, fakes = _sync_service(tmp_path)
    service.handle("a", feedback_for(fakes["a"]))
    service.handle("b", P.make(P.Kind.NODE_LEFT, "broker", meta={"node": "b", "reason": "expired"}))
    assert service.trainer.step == 1


def test_feedback_for_another_run_or_process_start_is_refused_but_the_round_waits_for_the_real_answer(
        tmp_path: Path) -> None:
    service, fakes = _sync_service(tmp_path)
    other_run = feedback_for(fakes["a"])
    other_run.run_id = "an-older-run"
    service.handle("a", other_run)
    other_epoch = feedback_for(fakes["b"])
    other_epoch.reply_to = ((P.EPOCH % (2**30 - 1)) + 1 << 32) + (fakes["b"].msg_id & 0xFFFFFFFF)
    service.handle("b", other_epoch)
    assert service.nodes["a"].counts["other_run"] == 1 and service.nodes["b"].counts["other_run"] == 1
    assert service.trainer.samples_applied == 0 and len(service.trainer.inflight) == 2
    assert service.policy.members == {"a", "b"}  # their real answers are still due: they stay in the round
    service.handle("a", feedback_for(fakes["a"]))
    service.handle("b", feedback_for(fakes["b"]))
    assert service.trainer.step == 1


def test_service_sync_round_closes_when_a_member_never_answers_within_the_round_timeout(tmp_path: Path) -> None:
    import time

    service, fakes = _sync_service(tmp_path)
    service.cfg.round_timeout = 60.0
    service.handle("a", feedback_for(fakes["a"]))  # b dropped its request (say, after its own timeout): silence
    service.policy.served_at["b"] = time.monotonic() - 59.0
    service._periodic()
    assert service.trainer.step == 0
    service.policy.served_at["b"] = time.monotonic() - 61.0  # as if a minute had passed
    service._periodic()
    assert service.trainer.step == 1 and service.counters["round_timeouts"] == 1 and not service.trainer.inflight


def test_service_sync_round_closes_when_fakes_could_not_leave_the_process(tmp_path: Path) -> None:
    service, fakes = _sync_service(tmp_path, names=("a",))
    real_send = service.link.send
    service.link.send = lambda to, msg: False if msg.kind == P.Kind.FAKES else real_send(to, msg)
    service.handle("b", P.make(P.Kind.HELLO, "b", meta={"role": "node", "dataset_size": 1}))
    service.handle("b", P.make(P.Kind.FAKE_REQUEST, "b", tensors={"masks": np.zeros((1, 16, 16), np.uint8)}))
    assert service.counters["fakes_unsent"] == 1 and "b" not in service.policy.members
    service.handle("a", feedback_for(fakes["a"]))
    assert service.trainer.step == 1


def _async_service(tmp_path: Path, **train: object) -> tuple[GeneratorService, GeneratorTrainer, dict[str, Any]]:
    """An async service with nodes a and b welcomed (scripted, in-process)."""
    hub = InProcessHub()
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4),
                               TrainConfig(steps=100, fake_dtype="float32", **train))  # type: ignore[arg-type]
    service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(out=tmp_path, sample_every=0,
                                                                            checkpoint_every=0))
    links = {n: hub.node_link(n) for n in "ab"}
    for n, link in links.items():
        service.handle(n, P.make(P.Kind.HELLO, n, meta={"role": "node", "dataset_size": 1}))
        assert link.recv(1).kind == P.Kind.WELCOME
    return service, trainer, links


def test_service_buffered_async_steps_once_both_nodes_fed_back_in_any_order(tmp_path: Path) -> None:
    service, trainer, links = _async_service(tmp_path, update_every=0)
    fakes = []
    for n in "aab":  # a asks twice before b asks once: a served at once each time (async)
        service.handle(n, P.make(P.Kind.FAKE_REQUEST, n, tensors={"masks": np.zeros((1, 16, 16), np.uint8)}))
        fakes.append((n, links[n].recv(1)))
    assert all(f.kind == P.Kind.FAKES for _, f in fakes)
    service.handle("a", feedback_for(fakes[0][1]))
    assert trainer.step == 0  # one feedback of a buffer of two
    service.handle("a", feedback_for(fakes[1][1]))
    assert trainer.step == 1  # any two feedbacks fill it, from whichever nodes
    service.handle("b", feedback_for(fakes[2][1]))
    assert trainer.step == 1
    service.handle("a", P.make(P.Kind.GOODBYE, "a"))
    assert trainer.step == 2  # a left: b's pending feedback fills the buffer of one


def test_service_warns_when_the_nodes_label_iou_falls_and_records_it(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import json

    hub = InProcessHub()
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4),
                               TrainConfig(steps=100, fake_dtype="float32"))
    service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(
        out=tmp_path, sample_every=0, checkpoint_every=0, synthesize=False, synthesis_weights="judged"))
    service.label_watch.window, service.label_watch.patience = 2, 1
    link = hub.node_link("a")
    service.handle("a", P.make(P.Kind.HELLO, "a", meta={"role": "node", "dataset_size": 1}))
    assert link.recv(1).kind == P.Kind.WELCOME
    for value in (0.5, 0.6, 0.5, 0.1, 0.0):
        service.handle("a", P.make(P.Kind.FAKE_REQUEST, "a", tensors={"masks": np.zeros((1, 16, 16), np.uint8)}))
        fb = feedback_for(link.recv(1))
        fb.meta["losses"] = {"label_iou": value}
        with caplog.at_level("WARNING", logger="dgan.generator"):
            service.handle("a", fb)
    assert "label IoU on the fakes fell to 0.300" in caplog.text  # window means 0.55, 0.55, 0.3 (< 0.6 x 0.55)
    for bad in (float("nan"), 7.0):  # out of range: kept out of the watch and the log
        service.handle("a", P.make(P.Kind.FAKE_REQUEST, "a", tensors={"masks": np.zeros((1, 16, 16), np.uint8)}))
        fb = feedback_for(link.recv(1))
        fb.meta["losses"] = {"label_iou": bad}
        service.handle("a", fb)
    assert service.trainer.judged is None  # `--synthesis-weights judged` follows transfer_iou, not this judge
    summary = service.finish()
    assert summary["degraded_alarms"] == 1 and summary["label_iou_best"] == pytest.approx(0.55)
    rows = [json.loads(r) for r in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [r[10] for r in rows] == [0.5, 0.6, 0.5, 0.1, 0.0, None, None]  # the label_iou column
    resumed = GeneratorTrainer.from_state(load_checkpoint(tmp_path / "checkpoints" / "latest.pt"))
    again = GeneratorService(hub.generator_link(), resumed, ServiceConfig(out=tmp_path / "r"))
    assert again.label_watch.best == pytest.approx(0.55)  # a resumed run keeps the best to beat
    assert again.label_watch.best_step == service.label_watch.best_step and again.transfer_watch.best is None


def test_service_warns_when_the_fakes_stop_teaching_a_segmenter_about_real_images(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """transfer_iou: its own watch, its own column and run.json keys; out-of-range values are dropped."""
    import json

    hub = InProcessHub()
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4),
                               TrainConfig(steps=100, fake_dtype="float32"))
    service = GeneratorService(hub.generator_link(), trainer, ServiceConfig(
        out=tmp_path, sample_every=0, checkpoint_every=0, synthesize=False, synthesis_weights="judged"))
    link = hub.node_link("a")
    service.handle("a", P.make(P.Kind.HELLO, "a", meta={"role": "node", "dataset_size": 1}))
    assert link.recv(1).kind == P.Kind.WELCOME
    sent = [{"label_iou": 0.4, "transfer_iou": 0.2}, {"label_iou": 0.4}, {"transfer_iou": 0.3},
            {"label_iou": 0.45, "transfer_iou": 0.02}, {"transfer_iou": -1.0}, {"transfer_iou": float("nan")},
            {"label_iou": 0.5, "transfer_iou": 0.0}, {"transfer_iou": 0.0}]
    for losses in sent:
        service.handle("a", P.make(P.Kind.FAKE_REQUEST, "a", tensors={"masks": np.zeros((1, 16, 16), np.uint8)}))
        fb = feedback_for(link.recv(1))
        fb.meta["losses"] = losses
        with caplog.at_level("WARNING", logger="dgan.generator"):
            service.handle("a", fb)
    # windows of 2 verdicts: 0.25 (best), 0.16, 0.01, 0.0 -> below half the best twice in a row: one alarm
    assert "a segmenter trained on the fakes now scores IoU 0.000" in caplog.text
    assert "label IoU on the fakes fell" not in caplog.text  # the label judge saw nothing wrong
    summary = service.finish()
    assert summary["transfer_iou_best"] == pytest.approx(0.25) and summary["transfer_iou_alarms"] == 1
    assert summary["transfer_iou_window"] == pytest.approx(0.0)
    kept = service.trainer.judged  # the weights `--synthesis-weights judged` uses: from the best window's step
    assert kept is not None and kept[0] == service.transfer_watch.best_step and summary["judged_step"] == kept[0]
    resumed = GeneratorTrainer.from_state(load_checkpoint(tmp_path / "checkpoints" / "latest.pt"))
    assert resumed.judged is not None and resumed.judged[0] == kept[0]
    again = GeneratorService(hub.generator_link(), resumed, ServiceConfig(out=tmp_path / "r"))
    assert again.transfer_watch.best == pytest.approx(0.25)  # a resumed run keeps the bests to beat
    assert service.label_watch.best is None and again.label_watch.best is None  # never a full label window here
    columns = json.loads((tmp_path / "feedback.json").read_text())["columns"]
    rows = [json.loads(r) for r in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [r[columns.index("transfer_iou")] for r in rows] == [0.2, None, 0.3, 0.02, None, None, 0.0, 0.0]
    assert [r[columns.index("label_iou")] for r in rows] == [0.4, 0.4, None, 0.45, None, None, 0.5, None]



def test_a_staleness_aware_buffer_grows_with_the_requests_in_flight() -> None:
    p = RoundPolicy("async", update_every=-1, max_staleness=8)
    p.request("a", None)
    for inflight, buffer in ((1, 1), (4, 1), (8, 2), (16, 4), (33, 9)):
        p.inflight = inflight
        assert p.buffer == buffer, inflight  # expected staleness inflight / buffer stays near 8 / 2
    p.inflight = 16
    assert not p.feedback("a", 3) and p.feedback("a", 4)


def test_service_staleness_buffer_flushes_when_the_node_holding_requests_leaves(tmp_path: Path) -> None:
    """update_every -1: a departure releases its requests, so the buffer shrinks and what waits is applied."""
    service, trainer, links = _async_service(tmp_path, update_every=-1, max_staleness=2)
    fakes = []
    for n in "abbb":  # four requests in flight: the buffer is ceil(2 * 4 / 2) = 4 feedbacks
        service.handle(n, P.make(P.Kind.FAKE_REQUEST, n, tensors={"masks": np.zeros((1, 16, 16), np.uint8)}))
        fakes.append(links[n].recv(1))
    service.handle("a", feedback_for(fakes[0]))
    assert trainer.step == 0 and trainer.pending == 1 and service.policy.buffer > 1
    service.handle("b", P.make(P.Kind.NODE_LEFT, "broker", meta={"node": "b", "reason": "expired"}))
    assert service.policy.inflight == 0 and trainer.step == 1 and trainer.pending == 0  # not held forever


def test_a_verdict_on_a_feedback_dropped_as_stale_still_reaches_the_watch(tmp_path: Path) -> None:
    """The transfer verdict delays the feedback that carries it: under load that one may arrive too stale for G."""
    service, trainer, fakes = one_node_service(tmp_path, 2, max_staleness=0)
    for f, value in zip(fakes, (0.2, 0.4), strict=True):
        fb = feedback_for(f)
        fb.meta["losses"] = {"transfer_iou": value}
        service.handle("a", fb)
    assert service.counters["dropped_stale"] == 1 and trainer.step == 1  # the second one was one step stale
    assert list(service.transfer_watch.values["a"]) == [0.2, 0.4]
