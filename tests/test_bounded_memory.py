"""What a peer can make the generator hold is bounded: STATUS size, mask uploads, rows of a long run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dgan import protocol as P
from dgan.networks import ModelConfig
from dgan.rowstream import RowStream
from dgan.training.generator import GeneratorTrainer, TrainConfig
from dgan.transport.inproc import InProcessHub
from nodes.generator_service import GeneratorService, ServiceConfig
from nodes.run_outputs import STATUS_NODES


def _service(tmp_path: Path, **cfg: object) -> tuple[GeneratorService, InProcessHub]:
    hub = InProcessHub()
    trainer = GeneratorTrainer(ModelConfig(image_size=16, g_width=4, g_depth=2, d_width=4), TrainConfig(steps=10))
    return GeneratorService(hub.generator_link(), trainer, ServiceConfig(out=tmp_path, sample_every=0,
                                                                         checkpoint_every=0, **cfg)), hub


def test_status_stays_small_however_many_nodes_the_run_has_seen(tmp_path: Path) -> None:
    service, hub = _service(tmp_path)
    for i in range(600):
        name = f"department-with-a-long-name-{i:04d}"
        hub.node_link(name)
        service.handle(name, P.make(P.Kind.HELLO, name, meta={"role": "node", "dataset_size": 1}))
        if i % 2:
            service.handle(name, P.make(P.Kind.NODE_LEFT, "broker", meta={"node": name, "reason": "expired"}))
    status = service.status()
    assert len(status["nodes"]) == STATUS_NODES and status["nodes_alive"] == 300
    assert status["nodes_total"] == 300  # the 300 that left having given nothing are forgotten: no growth
    assert all(n["alive"] for n in status["nodes"].values())  # the alive ones come first
    header = P.encode(P.make(P.Kind.STATUS, "generator", meta=status))[1]
    assert len(header) < P.DEFAULT_LIMITS.max_header_bytes // 4


def test_mask_uploads_over_the_per_node_byte_cap_are_refused_with_an_error(tmp_path: Path) -> None:
    service, hub = _service(tmp_path, max_mask_bytes=16 * 16 * 10)  # ten 16x16 masks
    link = hub.node_link("n")
    service.handle("n", P.make(P.Kind.HELLO, "n", meta={"role": "node", "dataset_size": 1}))
    link.recv(1)  # WELCOME
    for chunk in range(3):  # 3 chunks of 4 masks: the third passes the cap
        service.handle("n", P.make(P.Kind.MASKS, "n", meta={"chunk": chunk, "chunks": 3},
                                   tensors={"masks": np.zeros((4, 16, 16), np.uint8)}))
    err = link.recv(1)
    assert err.kind == P.Kind.ERROR and "MiB from one node" in err.meta["reason"]
    upload = service.nodes["n"].upload
    assert service.nodes["n"].masks is None and upload is not None
    assert sum(c.nbytes for c in upload.chunks.values()) <= 2560


def test_rows_of_a_long_run_stream_to_disk_and_become_the_same_json_document(tmp_path: Path) -> None:
    rows = RowStream(tmp_path / "f.jsonl", flush_every=7)
    for i in range(1000):
        rows.append([i, f"n{i % 3}", None])
    rows.write_document(tmp_path / "f.json", {"columns": ["i", "node", "x"]})
    rows.close()
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["columns"] == ["i", "node", "x"] and len(doc["rows"]) == 1000 and doc["rows"][999] == [999, "n0", None]
    again = RowStream(tmp_path / "f.jsonl", append=True)  # a resumed run keeps what came before
    again.append([1000, "n1", 1.5])
    again.write_document(tmp_path / "h.json")
    again.close()
    assert len(json.loads((tmp_path / "h.json").read_text())) == 1001


def test_the_command_line_and_the_broker_load_without_torch() -> None:
    """The broker routes bytes: it must not carry torch's few hundred MB (the fuzz benchmark measures its RSS)."""
    import subprocess
    import sys

    code = "import sys, dgan.cli, broker.broker, dgan.feedback; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent).returncode == 0
