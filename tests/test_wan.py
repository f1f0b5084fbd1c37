"""Across networks: the automatic pipeline, the delaying relay, shaped hosts and the WAN bench's verdicts."""

from __future__ import annotations

import heapq
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from benchmarks.delay_relay import probe
from benchmarks.light_node import FixedGradientTrainer, LightNode
from benchmarks.netlab import NetLab, NetLabUnavailable
from benchmarks.wan import _per_node, least_served, targets
from dgan import protocol as P
from dgan.commands import free_ports
from dgan.data.scenes import make_scenes
from dgan.networks import ModelConfig
from dgan.transport.inproc import InProcessHub
from nodes.discriminator_node import NodeConfig, pipeline_depth
from tests.conftest import ROOT, wait_until

RELAY = [sys.executable, "-m", "benchmarks.delay_relay"]
MODEL = ModelConfig(image_size=32, g_width=8, g_depth=3, d_width=8, d_layers=2)


def test_pipeline_depth_covers_the_wire_and_not_the_generators_queue() -> None:
    assert pipeline_depth(0.0, 0.2, 2, 8) == 2  # a LAN: the base depth covers the generator's own time
    assert pipeline_depth(0.04, 0.2, 2, 8) == 2  # a wire under a quarter batch needs nothing more
    assert pipeline_depth(0.3, 0.2, 2, 8) == 4  # 1.5 batches of wire: two more requests
    assert pipeline_depth(5.0, 0.2, 2, 8) == 8  # never past what the generator keeps per node
    assert pipeline_depth(5.0, 0.2, 2, 1) == 1
    for wire, service in ((float("nan"), 0.2), (0.3, 0.0), (-1.0, 0.2), (float("inf"), 0.2)):
        assert pipeline_depth(wire, service, 2, 8) == 2, (wire, service)


def _scripted_generator(hub: InProcessHub, rtt: float, held_share: float, max_inflight: object, stop: threading.Event,
                        peak: list[int]) -> None:
    """Answers every request ``rtt`` later and says it held it ``held_share`` of that time."""
    link = hub.generator_link()
    due: list[tuple[float, int, np.ndarray]] = []
    while not stop.is_set():
        got = link.recv(0.005)
        if got is not None:
            name, msg = got
            if msg.kind == P.Kind.HELLO:
                link.send(name, P.make(P.Kind.WELCOME, "generator", run_id="r", meta={"config": {
                    "model": MODEL.to_dict(), "need_masks": False, "max_inflight": max_inflight}}))
            elif msg.kind == P.Kind.FAKE_REQUEST:
                heapq.heappush(due, (time.monotonic() + rtt, msg.msg_id, msg.tensors["masks"]))
                peak[0] = max(peak[0], len(due))
        while due and due[0][0] <= time.monotonic():
            _, rid, masks = heapq.heappop(due)
            link.send("n0", P.make(P.Kind.FAKES, "generator", run_id="r", reply_to=rid,
                                   meta={"held_s": rtt * held_share},
                                   tensors={"fakes": np.zeros((len(masks), 3, 32, 32), np.float32)}))


def _run_auto_node(rtt: float, held_share: float, max_inflight: object = 6,
                   work_s: float = 0.02) -> tuple[LightNode, int]:
    images, masks = make_scenes(range(4), 32)
    hub = InProcessHub()
    stop, peak = threading.Event(), [0]
    gen = threading.Thread(target=_scripted_generator, args=(hub, rtt, held_share, max_inflight, stop, peak))
    gen.start()
    link = hub.node_link("n0")
    link.send(P.make(P.Kind.HELLO, "n0", meta={"role": "node", "dataset_size": 4, "image_size": 32,
                                                "feedback": "adversarial"}))
    node = LightNode(link, images, masks, NodeConfig("n0", batch_size=2, pipeline=2, auto_pipeline=True, judge=False),
                     work_s=work_s)
    thread = threading.Thread(target=node.run, args=(stop,), kwargs={"max_batches": 40}, daemon=True)
    thread.start()
    thread.join(60)
    stop.set()
    gen.join(10)
    return node, peak[0]


def test_auto_pipeline_deepens_for_a_slow_wire_up_to_the_generators_bound() -> None:
    node, peak = _run_auto_node(rtt=0.15, held_share=0.0)  # all of the round trip is the wire
    assert node.stats.batches >= 40
    assert node.stats.pipeline == 6 and peak == 6  # 0.15 s of wire / 0.02 s of work: capped by max_inflight
    assert isinstance(node.trainer, FixedGradientTrainer)


def test_auto_pipeline_stays_shallow_when_the_generator_is_what_takes_time() -> None:
    # the generator held each request the whole time; in-process hand-offs leave a few ms of "wire"
    node, _ = _run_auto_node(rtt=0.15, held_share=1.0, work_s=0.05)
    assert node.stats.batches >= 40
    assert node.stats.pipeline == 2  # deeper would only queue at the generator, and go stale
    assert node.stats.pipeline_sum / node.stats.batches < 2.3


@pytest.mark.parametrize("hostile", ["8", 1000, 0, True, None])
def test_a_hostile_max_inflight_in_welcome_falls_back_to_the_default(hostile: object) -> None:
    node, _ = _run_auto_node(rtt=0.15, held_share=0.0, max_inflight=hostile)
    assert node.max_inflight == 4 and node.stats.pipeline == 4


@pytest.mark.parametrize("value", ["0", "deep", "-1", "65"])
def test_node_refuses_a_pipeline_that_is_not_a_count_or_auto(value: str) -> None:
    res = subprocess.run([sys.executable, "-m", "dgan", "node", "--name", "n0", "--pipeline", value],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and "or auto" in " ".join(res.stderr.split()), res.stderr


def test_delay_relay_adds_its_delay_each_way_and_keeps_every_byte() -> None:
    echo_port, relay_port = free_ports(2)
    procs = [subprocess.Popen([*RELAY, "echo", "--listen", f"127.0.0.1:{echo_port}"], cwd=ROOT),
             subprocess.Popen([*RELAY, "relay", "--listen", f"127.0.0.1:{relay_port}", "--to",
                               f"127.0.0.1:{echo_port}", "--delay-ms", "40"], cwd=ROOT)]
    try:
        wait_until(lambda: _connects(relay_port), 30, "the relay to listen")
        got = probe(f"127.0.0.1:{relay_port}", pings=5, bulk_bytes=3 * 1024 * 1024 + 7)  # bytes checked inside
        assert got["rtt_ms"] >= 80.0  # 40 ms each way, never less
        assert got["rtt_ms"] < 1000.0
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _connects(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_shaped_host_gets_its_rate_and_round_trip() -> None:
    try:
        lab = NetLab(["b", "n0"], subnet="10.231.9").__enter__()
    except NetLabUnavailable as exc:
        pytest.skip(str(exc))
    try:
        b, n = lab.hosts["b"], lab.hosts["n0"]
        echo = subprocess.Popen([*b.prefix, *RELAY, "echo", "--listen", "0.0.0.0:7000"], cwd=ROOT)
        relay = subprocess.Popen([*n.prefix, *RELAY, "relay", "--listen", "127.0.0.1:7001", "--to",
                                  f"{b.addr}:7000", "--delay-ms", "25"], cwd=ROOT)
        lab.shape("n0", 20)
        time.sleep(1.0)
        res = subprocess.run([*n.prefix, *RELAY, "probe", "--to", "127.0.0.1:7001", "--bulk-mib", "1"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        got = json.loads(res.stdout)
        assert got["rtt_ms"] >= 50.0
        assert got["mbit"] < 30.0  # tbf holds it near 20 Mbit/s (unshaped veth: hundreds)
        echo.kill()
        relay.kill()
    finally:
        lab.close()


def test_wan_targets_compare_rows_of_one_run_and_say_when_missed() -> None:
    rows = [{"profile": p, "name": n, "samples_per_s": r} for p, n, r in (
        ("lan", "async", 100.0), ("lan", "async-auto", 100.0), ("regional", "async-auto", 95.0),
        ("far", "async", 50.0), ("far", "async-auto", 85.0), ("far", "sync", 40.0))]
    t = targets(rows)
    assert t["regional_async-auto_vs_lan"]["met"] and "regional_async_vs_lan" not in t
    assert not t["far_async_vs_lan"]["met"] and t["far_async-auto_vs_lan"]["met"]
    assert t["far_async-auto_vs_sync"]["ratio"] == pytest.approx(85 / 40) and t["far_async-auto_vs_sync"]["met"]
    assert not t["far_async_vs_sync"]["met"]
    assert targets([]) == {}


def test_wan_targets_set_an_8bit_async_run_against_8bit_rounds_too() -> None:
    rows = [{"profile": p, "name": n, "samples_per_s": r} for p, n, r in (
        ("far", "async-auto-8bit", 300.0), ("far", "sync", 50.0), ("far", "sync-8bit", 200.0))]
    t = targets(rows)
    assert t["far_async-auto-8bit_vs_sync"]["met"]  # against the default wire's rounds: 6x
    assert t["far_async-auto-8bit_vs_sync-8bit"]["ratio"] == pytest.approx(1.5)
    assert not t["far_async-auto-8bit_vs_sync-8bit"]["met"]  # like for like: the wire, not asynchrony, gave it
    assert not any(k.startswith("far_sync") for k in t)  # rounds are the yardstick, not a candidate


def test_wan_targets_never_set_a_float16_run_against_8bit_rounds() -> None:
    rows = [{"profile": "far", "name": n, "samples_per_s": r} for n, r in (
        ("async", 140.0), ("async-auto", 200.0), ("sync", 66.0), ("sync-8bit", 90.0))]
    t = targets(rows)
    assert set(t) == {"far_async_vs_sync", "far_async-auto_vs_sync"}


def test_wan_rows_name_the_node_whose_feedbacks_the_generator_applied_least() -> None:
    run = {"nodes": {"node0": {"feedbacks": 90, "counts": {}, "staleness_mean": 3.1},
                     "node3": {"feedbacks": 2, "counts": {"dropped_stale": 22}, "staleness_mean": 7.5},
                     "node9": {"feedbacks": 0, "counts": {}}}}  # never fed back: no share to rank
    per = _per_node(run)
    assert per["node3"] == {"applied": 2, "dropped_stale": 22, "discounted_stale": 0, "applied_share": 2 / 24,
                            "staleness_mean": 7.5}
    assert least_served(per) == "node3 2/24"
    kept = {**per, "node3": {**per["node3"], "applied": 24, "dropped_stale": 0, "discounted_stale": 22,
                             "applied_share": 1.0}}
    assert least_served(kept) == "node3 24/24 (22 discounted)"  # applied, but 22 of them at a cut weight
    assert least_served({}) == "-"


@pytest.mark.timeout(600)
def test_wan_bench_trains_across_shaped_hosts_and_reports_every_figure(tmp_path) -> None:
    try:
        NetLab(["probe"], subnet="10.231.11").__enter__().close()
    except NetLabUnavailable as exc:
        pytest.skip(str(exc))
    from benchmarks.wan import run_wan_benchmark

    res = run_wan_benchmark(True, tmp_path / "wan.json", nodes=2, profiles=["lan", "far"],
                            variants=["async", "async-auto-8bit", "sync", "sync-8bit"], plot=tmp_path / "wan.png")
    assert json.loads((tmp_path / "wan.json").read_text())["rows"] == res["rows"]
    assert (tmp_path / "wan.png").stat().st_size > 0
    far = next(p for p in res["paths"] if p["profile"] == "far")
    assert far["measured_rtt_ms"] >= 150 and far["measured_mbit"] < 60  # the shaping took hold
    rows = {(r["profile"], r["name"]): r for r in res["rows"]}
    assert set(rows) == {(p, v) for p in ("lan", "far") for v in ("async", "async-auto-8bit", "sync", "sync-8bit")}
    for r in rows.values():
        assert r["samples_per_s"] > 0 and r["bytes_per_sample"] > 2 * 3 * 128 * 128  # 128 px fakes and gradients
        assert len(r["per_node"]) == 2 and all(i["applied"] > 0 for i in r["per_node"].values())
    for p in ("lan", "far"):  # 8-bit fakes and gradients: about half of float16 (masks are packed in both)
        assert rows[(p, "async-auto-8bit")]["bytes_per_sample"] < 0.52 * rows[(p, "async")]["bytes_per_sample"]
        assert rows[(p, "sync-8bit")]["bytes_per_sample"] < 0.52 * rows[(p, "sync")]["bytes_per_sample"]
    # the far link's 150 ms shows in the nodes' own timestamps, and not on the LAN
    assert rows[("far", "async")]["comm_share"] > rows[("lan", "async")]["comm_share"]
    assert "far_async_vs_sync" in res["targets"] and "far_async-auto-8bit_vs_sync-8bit" in res["targets"]
    assert "far_async_vs_sync-8bit" not in res["targets"]


@pytest.mark.timeout(300)
def test_scale_bench_serves_many_light_nodes_with_no_false_expiry(tmp_path) -> None:
    from benchmarks.scale import run_one

    r = run_one(40, 6.0, tmp_path)  # two node processes: 32 + 8
    assert r["registered"] == 40 and r["false_expiries"] == 0 and r["node_errors"] == 0
    assert r["feedbacks_per_s"] > 0 and 0 < r["wire_rtt_p50_ms"] <= r["wire_rtt_p99_ms"]
    assert 0 < r["status_bytes_max"] < r["status_limit_bytes"]
    assert r["broker_cpu_us_per_msg"] > 0


@pytest.mark.timeout(300)
def test_heartbeat_bench_keeps_every_live_peer_and_sees_the_ones_that_fall_silent(tmp_path) -> None:
    from benchmarks.heartbeats import run_one

    r = run_one(120, 1.0, 6.0, tmp_path, quiet=3)  # the broker expires a peer after 3 s of silence
    assert r["registered"] >= 117 and r["false_expiries"] == 0 and r["not_registered_replies"] == 0
    assert r["expired_quiet"] == 3  # the expiry count is real: the three silent peers are in it
    assert r["broker_cpu_us_per_heartbeat"] > 0 and 0 < r["status_bytes_max"] < r["status_limit_bytes"]


def test_netlab_refuses_host_names_that_would_not_fit_a_linux_interface_name() -> None:
    for names in (["toolongname"], ["a", "a"], ["Upper"], ["n-1"], []):
        with pytest.raises(ValueError, match="host names must be"):
            NetLab(names)


@pytest.mark.parametrize("bench", ["scale", "heartbeats"])
def test_the_scale_and_heartbeat_benches_start_processes_that_end_with_them(
        bench: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess

    from benchmarks import heartbeats, scale
    from dgan.stop_signals import DIE_WITH_PARENT, starter_token

    envs: list[dict[str, str] | None] = []

    def spy(*args: object, env: dict[str, str] | None = None, **kwargs: object) -> None:
        envs.append(env)
        raise RuntimeError("captured")

    monkeypatch.setattr(subprocess, "Popen", spy)
    with pytest.raises(RuntimeError, match="captured"):
        scale.run_one(4, 1.0, tmp_path) if bench == "scale" else heartbeats.run_one(4, 1.0, 1.0, tmp_path)
    assert envs[0] is not None and envs[0][DIE_WITH_PARENT] == starter_token()  # even if the bench is SIGKILLed
    assert starter_token().startswith(f"{os.getpid()}:")
