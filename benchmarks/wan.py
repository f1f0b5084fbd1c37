"""`dgan bench wan`: training across hosts on shaped links, async against sync, per network profile.

Broker, generator and each node run on their own network-namespace host
(``benchmarks.netlab``).  Each node's link is shaped with ``tbf`` and its
round trip lengthened by a delaying relay on the node's host
(``benchmarks.delay_relay``); the generator sits next to the broker.  Per
profile the bench first measures what the path really gives (RTT, Mbit/s),
then trains with the real CLI processes (``dgan.run.run_local``) in async and
sync modes, and with ``--pipeline auto`` where that is measured.

The communication share is each node's blocked time with a request out,
scaled by the share of its round trips that the wire and broker account for
(round trip less the time the generator held the request, by the
generator's own clock), over the node's active time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import ONE_D_STEP
from benchmarks.netlab import NetLab
from benchmarks.training import applied_rate
from dgan.commands import Ports
from dgan.feedback import DEFAULT_MODE
from dgan.run import Placement, RunConfig, run_local

RELAY = [sys.executable, "-m", "benchmarks.delay_relay"]
ECHO_PORT = 7000


@dataclass(frozen=True)
class Link:
    mbit: float
    rtt_ms: float


@dataclass(frozen=True)
class Profile:
    name: str
    link: Link
    slow: Link | None = None  # the last node's link, when it differs

    def node_link(self, i: int, nodes: int) -> Link:
        return self.slow if self.slow is not None and i == nodes - 1 else self.link


PROFILES = {p.name: p for p in (
    Profile("lan", Link(1000, 0.0)),
    Profile("regional", Link(100, 40.0)),
    Profile("far", Link(50, 150.0)),
    Profile("far+slow", Link(50, 150.0), slow=Link(10, 300.0)),
)}


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str
    pipeline: str  # each node's --pipeline
    update_every: str  # the generator's --update-every
    grad_dtype: str = "float16"  # each node's --grad-dtype
    fake_dtype: str = "float16"  # the generator's --fake-dtype
    stale_policy: str = "drop"  # the generator's --stale-policy


VARIANTS = [
    Variant("async", "async", "2", "1"),  # the defaults
    Variant("async-auto", "async", "auto", "auto"),  # latency hiding, and a buffer that keeps staleness bounded
    Variant("async-auto-u1", "async", "auto", "1"),  # latency hiding alone: deeper pipelines go stale
    Variant("async-auto-8bit", "async", "auto", "auto", "int8", "uint8"),  # and 8-bit fakes and gradients
    # and feedbacks past the staleness bound applied discounted, not dropped: a slow link's node keeps counting
    Variant("async-auto-8bit-discount", "async", "auto", "auto", "int8", "uint8", "discount"),
    Variant("sync", "sync", "2", "1"),
    Variant("sync-8bit", "sync", "2", "1", "int8", "uint8"),  # rounds on the 8-bit wire: async-auto-8bit's like
]
SYNC_NAMES = frozenset(v.name for v in VARIANTS if v.mode == "sync")
QUICK_SKIPS = frozenset({"async-auto-u1", "sync-8bit", "async-auto-8bit-discount"})  # --quick: about 3 minutes
_WIRE = {v.name: (v.grad_dtype, v.fake_dtype) for v in VARIANTS}


def _sizes(quick: bool, light: bool) -> dict[str, int]:
    """Light peers: 128 px on the wire (about 199 KB per sample with the default dtypes, masks packed)."""
    if light:
        return {"image_size": 128, "g_width": 8, "d_width": 8, "steps": 100 if quick else 400}
    return {"image_size": 64, "g_width": 16, "d_width": 16, "steps": 48} if quick else {
        "image_size": 128, "g_width": 32, "d_width": 32, "steps": 160}


def _start(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def feedback_rate(out: Path) -> float:
    """Applied samples per second from the generator's per-feedback record, first third skipped as warm-up
    (finer than the once-a-second status history, which a 10 s run would give only a few points of)."""
    fb = json.loads((out / "feedback.json").read_text())
    t, n = fb["columns"].index("time"), fb["columns"].index("samples")
    rows = sorted(fb["rows"], key=lambda r: r[t])
    if len(rows) < 6:
        return applied_rate(out)
    a = len(rows) // 3
    return sum(r[n] for r in rows[a + 1:]) / max(1e-9, rows[-1][t] - rows[a][t])


def _run_stats(out: Path) -> dict[str, Any]:
    run = json.loads((out / "run.json").read_text())
    nodes = [json.loads(f.read_text()) for f in sorted((out / "nodes").glob("*.json"))]
    shares = [n["comm_wait_s"] / n["active_s"] for n in nodes if n["active_s"] > 0]
    stale = [(i["staleness_mean"], i["feedbacks"]) for i in run["nodes"].values()
             if i.get("staleness_mean") is not None]
    fb = sum(w for _, w in stale)
    samples = sum(n["samples"] for n in nodes)
    return {
        "samples_per_s": feedback_rate(out),
        "staleness_mean": sum(s * w for s, w in stale) / fb if fb else float("nan"),
        "dropped_stale": int(run["counters"].get("dropped_stale", 0)),
        "discounted_stale": int(run["counters"].get("discounted_stale", 0)),
        "bytes_per_sample": sum(n["wire_bytes"] for n in nodes) / samples if samples else float("nan"),
        "comm_share": statistics.mean(shares) if shares else float("nan"),
        "comm_share_max": max(shares) if shares else float("nan"),
        "pipeline_mean": statistics.mean(n.get("pipeline_mean", n.get("pipeline", 0)) for n in nodes) if nodes
        else float("nan"),
        "per_node": _per_node(run),
    }


def _per_node(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each node's applied and stale-dropped feedbacks: a slow link's node can be all but shut out by the staleness
    bound while the totals look healthy."""
    out = {}
    for name, i in sorted(run["nodes"].items()):
        applied, dropped = int(i.get("feedbacks", 0)), int(i.get("counts", {}).get("dropped_stale", 0))
        out[name] = {"applied": applied, "dropped_stale": dropped,
                     "discounted_stale": int(i.get("counts", {}).get("discounted_stale", 0)),
                     "applied_share": applied / (applied + dropped) if applied + dropped else float("nan"),
                     "staleness_mean": i.get("staleness_mean")}
    return out


def run_wan_benchmark(quick: bool, json_out: Path | None, nodes: int = 4, batch: int = 8,
                      profiles: list[str] | None = None, feedback: str = DEFAULT_MODE.value, light: bool = True,
                      work_ms: float = 20.0, gen_ms_per_sample: float = 2.0, repeats: int | None = None,
                      plot: Path | None = None, variants: list[str] | None = None) -> dict[str, Any]:
    """``light``: the real broker, service and node code, but nodes answer with a fixed gradient after
    ``work_ms`` per batch (``benchmarks.light_node``) and the generator with fixed fakes after
    ``gen_ms_per_sample`` (``benchmarks.light_generator``): GPU-like costs, so the wire sets the pace.
    Otherwise real G and D (CPU here: compute sets the pace) with node ``feedback``.  Each variant runs
    ``repeats`` times (interleaved); rows hold the median run by samples/s, and every run's rate."""
    console = Console(width=max(150, Console().width))
    names = profiles or (["lan", "far"] if quick else list(PROFILES))
    sz = _sizes(quick, light)
    chosen = [v for v in VARIANTS if v.name in variants] if variants else \
        VARIANTS if not quick else [v for v in VARIANTS if v.name not in QUICK_SKIPS]
    reps = repeats or (1 if quick else 3)
    rows: list[dict[str, Any]] = []
    paths: list[dict[str, Any]] = []
    hostnames = ["b", "g", *(f"n{i}" for i in range(nodes))]
    with NetLab(hostnames) as lab, tempfile.TemporaryDirectory() as tmp:
        broker = lab.hosts["b"]
        echo = _start([*broker.prefix, *RELAY, "echo", "--listen", f"0.0.0.0:{ECHO_PORT}"])
        try:
            for name in names:
                prof = PROFILES[name]
                paths += _measure_paths(lab, prof, nodes, broker.addr)
                runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in chosen}
                for rep in range(reps):
                    for v in chosen:
                        with console.status(f"{name}: {v.name} ({rep + 1}/{reps})…"):
                            out = Path(tmp) / f"{name}-{v.name}-{rep}"
                            t0 = time.monotonic()
                            _train(lab, prof, nodes, out, v, sz, batch, feedback,
                                   (work_ms, gen_ms_per_sample) if light else None)
                            runs[v.name].append({**_run_stats(out), "wall_s": time.monotonic() - t0})
                        console.log(f"{name} {v.name} ({rep + 1}/{reps}): {runs[v.name][-1]['samples_per_s']:.2f} "
                                    "samples/s")
                for v in chosen:
                    got = sorted(runs[v.name], key=lambda r: r["samples_per_s"])
                    rows.append({"profile": name, **asdict(v), **asdict(prof.link),
                                 "slow_link": asdict(prof.slow) if prof.slow else None, **got[len(got) // 2],
                                 "runs_samples_per_s": [r["samples_per_s"] for r in runs[v.name]]})
        finally:
            echo.kill()
            echo.wait()
    result = {"rows": rows, "paths": paths, "targets": targets(rows), "image_size": sz["image_size"],
              "g_width": sz["g_width"], "nodes": nodes, "batch_per_node": batch, "quick": quick, "repeats": reps,
              "peers": (f"light: nodes {work_ms:g} ms per batch, generator {gen_ms_per_sample:g} ms per sample"
                        if light else f"real G and D, feedback {feedback}")}
    _print(console, result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    if plot is not None:
        write_plot(result, plot)
    return result


def _relays(lab: NetLab, prof: Profile, nodes: int, port: int, target: str) -> list[subprocess.Popen[bytes]]:
    """One delaying relay per node host (listening on the host's loopback), and the node links shaped."""
    procs = []
    for i in range(nodes):
        link = prof.node_link(i, nodes)
        lab.shape(f"n{i}", link.mbit)
        procs.append(_start([*lab.hosts[f"n{i}"].prefix, *RELAY, "relay", "--listen", f"127.0.0.1:{port}",
                             "--to", f"{target}:{port}", "--delay-ms", str(link.rtt_ms / 2)]))
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _measure_paths(lab: NetLab, prof: Profile, nodes: int, broker_addr: str) -> list[dict[str, Any]]:
    """What the shaped, relayed path gives, for each distinct link of the profile."""
    relays = _relays(lab, prof, nodes, ECHO_PORT, broker_addr)
    time.sleep(0.5)
    measured = []
    try:
        for i in sorted({0, nodes - 1} if prof.slow else {0}):
            link = prof.node_link(i, nodes)
            bulk = max(1.0, link.mbit / 8 / 4)  # about 1/4 s of the nominal rate
            res = subprocess.run([*lab.hosts[f"n{i}"].prefix, *RELAY, "probe", "--to", f"127.0.0.1:{ECHO_PORT}",
                                  "--bulk-mib", str(bulk)], capture_output=True, text=True, timeout=120, check=True)
            got = json.loads(res.stdout)
            measured.append({"profile": prof.name, "node": f"n{i}", "nominal_mbit": link.mbit,
                             "nominal_rtt_ms": link.rtt_ms, "measured_mbit": got["mbit"],
                             "measured_rtt_ms": got["rtt_ms"]})
    finally:
        _stop(relays)
    return measured


def _train(lab: NetLab, prof: Profile, nodes: int, out: Path, v: Variant, sz: dict[str, int],
           batch: int, feedback: str, light: tuple[float, float] | None) -> None:
    broker = lab.hosts["b"]
    # about the same number of feedbacks in every variant: a sync round takes one per node
    steps = sz["steps"] if v.mode == "async" and v.update_every == "1" else max(3, sz["steps"] // nodes)
    place = Placement(prefix={"broker": broker.prefix, "generator": lab.hosts["g"].prefix,
                              **{f"node{i}": lab.hosts[f"n{i}"].prefix for i in range(nodes)}},
                      broker_host=broker.addr, node_host={f"node{i}": "127.0.0.1" for i in range(nodes)},
                      ports=Ports(5555, 5556, 5557, host=broker.addr))  # fresh namespaces: any ports are free
    cfg = RunConfig(nodes=nodes, steps=steps, out=out, scenes=nodes * 40, image_size=sz["image_size"],
                    g_width=sz["g_width"], d_width=sz["d_width"], batch_size=batch, mode=v.mode, feedback=feedback,
                    synthesize=False, checkpoint_every=0, sample_every=0, timeout=900, placement=place,
                    pipeline=v.pipeline, node_module="dgan" if light is None else "benchmarks.light_node",
                    node_args=["--grad-dtype", v.grad_dtype,
                               *(ONE_D_STEP if light is None else ["--work-ms", str(light[0])])],
                    generator_module="dgan" if light is None else "benchmarks.light_generator",
                    extra_generator_args=["--update-every", v.update_every, "--fake-dtype", v.fake_dtype,
                                          "--stale-policy", v.stale_policy,
                                          *([] if light is None else ["--work-ms", str(light[1])])])
    relays = _relays(lab, prof, nodes, place.ports.node, broker.addr)
    try:
        run_local(cfg)
    finally:
        _stop(relays)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's ratios, each from rows of the same run; a missing row gives no verdict. Every async variant is
    set against the default rounds (``sync``, the issue's yardstick), and also against rounds on its own wire
    where the run has them (``far_async-auto-8bit_vs_sync-8bit``), so the wire's gain is not credited to
    asynchrony. Rounds on another wire than the variant's are no yardstick for it."""
    rate = {(r["profile"], r["name"]): r["samples_per_s"] for r in rows}
    names = list(dict.fromkeys(r["name"] for r in rows))
    syncs = [n for n in names if n in SYNC_NAMES]
    asyncs = [n for n in names if n not in SYNC_NAMES]
    out: dict[str, Any] = {}
    for prof, need in (("regional", 0.9), ("far", 0.8)):
        for name in asyncs:
            lan, r = rate.get(("lan", name)), rate.get((prof, name))
            if lan and r is not None:
                out[f"{prof}_{name}_vs_lan"] = {"ratio": r / lan, "target": need, "met": r / lan >= need}
    for name in asyncs:
        for s in syncs:
            if s != "sync" and _WIRE.get(s) != _WIRE.get(name):
                continue
            sync, r = rate.get(("far", s)), rate.get(("far", name))
            if sync and r is not None:
                out[f"far_{name}_vs_{s}"] = {"ratio": r / sync, "target": 2.0, "met": r / sync >= 2.0}
    return out


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Samples/s against the nodes' round trip, one line per variant (the far+slow profile at its fast RTT)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(dict.fromkeys(r["name"] for r in result["rows"]))
    labelled = next((n for n in names if n in SYNC_NAMES), None)  # the profiles named once, on one sync line
    for name in names:
        pts = sorted((r["rtt_ms"], r["samples_per_s"], r["profile"]) for r in result["rows"] if r["name"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for x, y, prof in pts:
            if name == labelled:
                ax.annotate(prof, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("node round trip, ms (nominal)")
    ax.set_ylabel("applied samples/s (median)")
    ax.set_title(f"{result['nodes']} nodes, {result['image_size']} px; {result['peers']}", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def least_served(per_node: dict[str, dict[str, Any]]) -> str:
    """The node whose feedbacks the generator applied at full weight least often: ``name applied/sent``, and how
    many of the applied ones were discounted."""
    sent = {n: i for n, i in per_node.items() if i["applied"] + i["dropped_stale"]}
    if not sent:
        return "-"

    def full_share(i: dict[str, Any]) -> float:
        return (i["applied"] - i.get("discounted_stale", 0)) / (i["applied"] + i["dropped_stale"])

    name, i = min(sent.items(), key=lambda kv: (full_share(kv[1]), kv[0]))
    cut = i.get("discounted_stale", 0)
    return f"{name} {i['applied']}/{i['applied'] + i['dropped_stale']}" + (f" ({cut} discounted)" if cut else "")


def _print(console: Console, result: dict[str, Any]) -> None:
    paths = Table(title="what each shaped path gives (1 KiB ping-pong RTT; bulk echo through the relay)")
    for col in ("profile", "node", "nominal Mbit/s", "measured Mbit/s", "nominal RTT ms", "measured RTT ms"):
        paths.add_column(col)
    for p in result["paths"]:
        paths.add_row(p["profile"], p["node"], f"{p['nominal_mbit']:g}", f"{p['measured_mbit']:.1f}",
                      f"{p['nominal_rtt_ms']:g}", f"{p['measured_rtt_ms']:.1f}")
    console.print(paths)
    table = Table(title=f"training across hosts ({result['nodes']} nodes; {result['peers']}; "
                        f"{result['image_size']} px, batch {result['batch_per_node']})")
    for col in ("profile", "variant", "samples/s median (range)", "staleness", "dropped stale", "bytes/sample",
                "comm share", "max node comm share", "mean pipeline", "least-served node: applied / sent"):
        table.add_column(col)
    for r in result["rows"]:
        spread = r.get("runs_samples_per_s") or [r["samples_per_s"]]
        table.add_row(r["profile"], r["name"], f"{r['samples_per_s']:.1f}" + (
                      f" ({min(spread):.0f}-{max(spread):.0f})" if len(spread) > 1 else ""),
                      f"{r['staleness_mean']:.2f}", str(r["dropped_stale"]) + (
                          f" ({r['discounted_stale']} discounted)" if r.get("discounted_stale") else ""),
                      f"{r['bytes_per_sample']:,.0f}",
                      f"{r['comm_share']:.3f}", f"{r['comm_share_max']:.3f}", f"{r['pipeline_mean']:.2f}",
                      least_served(r.get("per_node") or {}))
    console.print(table)
    for k, t in result["targets"].items():
        console.print(f"{k}: {t['ratio']:.2f}x (target >= {t['target']}x): {'met' if t['met'] else 'MISSED'}")
