"""The fixed sets of choices, once: the command line offers them as enums, the configs validate against them.

Torch-free, so the command line (and the broker) can import it.
"""

from __future__ import annotations

import enum


class TrainMode(str, enum.Enum):
    async_ = "async"
    sync = "sync"


class GanMode(str, enum.Enum):
    vanilla = "vanilla"
    lsgan = "lsgan"


class Weighting(str, enum.Enum):
    size = "size"
    equal = "equal"


class Jacobian(str, enum.Enum):
    """Where a stale feedback is backpropagated through G: the weights that made its fakes, or the current ones."""

    made = "made"
    current = "current"


class StalePolicy(str, enum.Enum):
    """What the generator does with a feedback staler than --max-staleness: drop it, or apply it discounted."""

    drop = "drop"
    discount = "discount"


class FakeDtype(str, enum.Enum):
    float16 = "float16"
    float32 = "float32"
    uint8 = "uint8"


class Precision(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"  # bf16 on CUDA or a CPU with native bf16 (dgan.cpu_features), else fp32


class GradDtype(str, enum.Enum):
    float16 = "float16"
    float32 = "float32"
    int8 = "int8"  # per-sample scale, stochastic rounding (dgan.grad_codec)


class Partition(str, enum.Enum):
    iid = "iid"
    dirichlet = "dirichlet"
    size = "size"
    group = "group"


class RunPartition(str, enum.Enum):
    """What `dgan run` can split the built-in scenes by (they carry no group column)."""

    iid = "iid"
    size = "size"


class LocalHow(str, enum.Enum):
    """How a department's own segmenter uses the shared synthetic set beside its own real pairs."""

    mixed = "mixed"
    finetune = "finetune"
    pretrain = "pretrain"
    replay = "replay"


# the recipes whose batches hold both sets, so a real share applies and a batch needs room for two pairs
MIXING_HOWS = frozenset({LocalHow.mixed.value, LocalHow.replay.value})


class LocalFrom(str, enum.Enum):
    """The set a department model starts from: a GAN's synthetic sets, or (a yardstick) the pooled real pairs."""

    dgan = "dgan"
    central_gan = "central_gan"
    real_all = "real_all"


class SynthWeights(str, enum.Enum):
    """Which of the generator's weights synthesise a set."""

    auto = "auto"
    raw = "raw"
    ema = "ema"
    judged = "judged"
    snapshots = "snapshots"


def values(choice: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(m.value for m in choice)
