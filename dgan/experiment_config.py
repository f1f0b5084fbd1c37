"""The settings of `dgan experiment`: one place checks them, before hours of training could fail on them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from dgan.cpu_features import device_problem, resolve_precision
from dgan.data.scenes import CLASSES as SCENE_CLASSES
from dgan.experiment_splits import DUBAI_TEST, ExperimentSetupError, parse_groups, parse_test
from dgan.feedback import DEFAULT_MODE, FeedbackConfig, FeedbackMode, default_d_steps
from dgan.networks import ModelConfig
from dgan.segment import SegConfig

# department models, by the set they start from (dgan.choices.LocalFrom): a GAN's sets or the pooled real pairs
LOCAL_NAMES = {"dgan": "dgan_local", "central_gan": "central_local", "real_all": "real_local"}


@dataclass
class ExperimentConfig:
    out: Path
    data: Path | None = None  # None: built-in scenes
    scene_variant: str = "buildings"  # with data None: buildings, buildings-roads (3 classes) or ships
    num_classes: int = 2  # set from the data by run_experiment (classes.json, or the scene variant)
    partition: str = "group"
    test: str = DUBAI_TEST  # COLUMN=V1[,V2]: manifest rows held out for the test; COLUMN is also the group column
    groups: str = ""  # group partition: "a|b,c|d" = node 0 gets a, node 1 b and c...; "" = dealt largest first
    nodes: int = 4
    size: int = 128
    gan_steps: int = 800  # batches each GAN learns from (DGAN steps that average N feedbacks take N of them)
    batch_size: int = 8
    g_width: int = 32
    d_width: int = 32
    lambda_l1: float = 100.0  # feedback mode l1 only
    lambda_semantic: float = 20.0  # feedback mode semantic only
    lambda_colour: float = 0.0  # any mode: the fakes' per-class colour mean and spread against the node's data
    diffaugment: bool = False  # nodes' (and the central GAN's) PatchGAN sees DiffAugment'ed pairs
    feedback: tuple[str, ...] = (DEFAULT_MODE.value,)  # the first is `dgan`/`central_gan`
    label_mix: float = 0.0  # segmentation feedback: OASIS LabelMix weight
    oasis_optim: bool = False  # OASIS optimisers: D lr 4e-4, G lr 1e-4, beta1 0 for both
    gan_methods: tuple[str, ...] = ("central_gan", "dgan")  # which GAN methods to train (the real ones always run)
    seg: SegConfig = field(default_factory=lambda: SegConfig(steps=700))
    # photometric jitter for segmenters trained on a GAN's synthetic set alone; None: seg.photometric, as for real
    # pairs. 0.3 chosen on validation (session 22, tiles 8 and 5, 2 GAN seeds x 2 segmenters each): 15 of the 16
    # paired segmenters went up, central GAN +0.096 and +0.036, DGAN +0.037 and +0.035; real_all lost 0.02-0.04
    # from it (session 21), so real pairs keep seg.photometric
    synthetic_photometric: float | None = 0.3
    # the same for dgan_local's synthetic stage (or the synthetic share of its mixed batches); None: seg.photometric.
    # Session 22: jittered at 0.3, the departments' mean validation gain was +0.035 against +0.061 on tile 8, +0.023
    # against +0.016 on tile 5
    local_photometric: float | None = None
    seeds: int = 2
    gan_seeds: int = 1  # GAN trainings per GAN method; segmentation seed s trains on GAN s % gan_seeds
    with_sync: bool = False
    update_every: int = 1  # DGAN's async rule: feedbacks per generator step (0 = one per node: buffered)
    async_beta1: float | None = None  # DGAN async: G's Adam beta1 (None: the central GAN's)
    # DGAN: requests each node keeps in flight (with 4 nodes, 1 gives staleness ~3 and 2 ~7). 1 with snapshots 4: the
    # real experiment's best (session 19: 0.326 against 0.218 validation IoU at 2, no collapse; update-rule.md)
    pipeline: int = 1
    ema: float = 0.0  # both GANs keep this moving average of G's weights (0 = none): synthesised from with
    # snapshots 0, else measured beside as NAME_ema
    snapshots: int = 4  # > 0: both GANs synthesise from this many snapshots of G over the second half of training
    judged: bool = False  # also `dgan_judged`: the same DGAN trainings' sets from where the nodes' transfer_iou peaked
    # dgan_local: all the steps on the synthetic set, then all on the own pairs (validation, 64 px, tiles 8 and 5:
    # better than finetune's half and half, 0.377 vs 0.339 and 0.405 vs 0.392; mixed last, 0.286 and 0.323)
    local: tuple[str, ...] = ("pretrain",)
    # department models, mixed: the share of each batch from the department's real pairs; replay: the same in the
    # fine-tuning stage's batches (the rest stays synthetic)
    local_share: float = 0.5
    # what the department models start from: dgan's sets (`dgan_local`), and as yardsticks central_gan's
    # (`central_local`: what a department would gain from a set as good as the central GAN's, which needs the
    # pooled images) or the pooled real pairs themselves (`real_local`: what pooling every image would give it)
    local_from: tuple[str, ...] = ("dgan",)
    samples_per_mask: int = 2
    scenes: int = 600
    quick: bool = False
    cache: Path | None = None
    threads: int = 2
    device: str = "cpu"  # every GAN and segmenter, and the DGAN run's processes: cpu, cuda or cuda:N
    grad_dtype: str = "float16"  # DGAN nodes' gradients on the wire (int8: per-sample scale, dgan.grad_codec)
    fake_dtype: str = "float16"  # DGAN generator's fakes on the wire
    weighting: str = "size"  # DGAN generator: each feedback weighed by its node's dataset size, or all alike
    # both GANs' training passes (G's forward, every D's and the nodes' judges'): fp32, bf16 autocast, or auto
    # (bf16 only where the CPU or GPU computes it natively). Synthesis and the segmenters that score the sets stay
    # fp32, so the yardstick does not move
    precision: str = "fp32"
    channels_last: bool = False  # both GANs' G in NHWC (with bf16 on a CPU with AMX: 2.36x fp32's samples/s)
    # DGAN nodes' D steps per feedback (PatchGAN modes). The central GAN's D steps once per G step already; with N
    # nodes in turn each node's D steps once per N, so N gives every D the central D's pace. None: the nodes'
    # default per feedback mode (dgan.feedback.default_d_steps), as `dgan node` takes it
    d_steps: int | None = None

    def __post_init__(self) -> None:
        """Settings that would only fail after hours of GAN training fail here."""
        from dgan.choices import MIXING_HOWS, FakeDtype, GradDtype, LocalHow, Precision, Weighting, values

        if self.update_every < 0 or not 0.0 <= self.ema < 1.0 or not 0.0 < self.local_share < 1.0:
            raise ExperimentSetupError(f"update_every must be >= 0, ema in [0, 1) and local_share in (0, 1); got "
                                       f"{self.update_every}, {self.ema}, {self.local_share}")
        if self.snapshots < 0 or self.snapshots == 1:
            raise ExperimentSetupError(f"snapshots must be >= 0 and not 1 (one is the last weights), got "
                                       f"{self.snapshots}")
        if self.seeds < 1 or self.gan_seeds < 1:
            raise ExperimentSetupError(f"seeds and gan_seeds must be >= 1, got {self.seeds} and {self.gan_seeds}")
        if self.pipeline < 1:
            raise ExperimentSetupError(f"pipeline must be >= 1 (requests each node keeps in flight), got "
                                       f"{self.pipeline}")
        if self.async_beta1 is not None and not 0.0 <= self.async_beta1 < 1.0:  # NaN too
            raise ExperimentSetupError(f"async_beta1 must be in [0, 1), got {self.async_beta1}")
        for name, v in (("seg photometric", self.seg.photometric),
                        ("synthetic photometric", self.synthetic_photometric),
                        ("local photometric", self.local_photometric)):
            if v is not None and not 0.0 <= v <= 1.0:  # NaN too
                raise ExperimentSetupError(f"{name} must be in [0, 1], got {v}")
        if not 0.0 <= self.seg.positive_share <= 1.0:
            raise ExperimentSetupError(f"positive_share must be in [0, 1], got {self.seg.positive_share}")
        if self.scene_variant not in SCENE_CLASSES:
            raise ExperimentSetupError(f"scene variant must be one of {', '.join(SCENE_CLASSES)}, got "
                                       f"{self.scene_variant!r}")
        for name, allowed in (("grad_dtype", values(GradDtype)), ("fake_dtype", values(FakeDtype)),
                              ("weighting", values(Weighting)), ("precision", values(Precision))):
            if getattr(self, name) not in allowed:
                raise ExperimentSetupError(f"{name} must be one of {', '.join(allowed)}, got "
                                           f"{getattr(self, name)!r}")
        bad = [h for h in self.local if h not in values(LocalHow)]
        if bad:
            raise ExperimentSetupError(f"local must be among {', '.join(values(LocalHow))}, got {bad[0]!r}")
        if self.seg.batch_size < 1 or (self.seg.batch_size < 2 and MIXING_HOWS & set(self.local)):
            raise ExperimentSetupError(f"the segmenters' batch size must be >= 1 (>= 2 for local mixed or replay, "
                                       f"whose batches hold both sets), got {self.seg.batch_size}")
        bad = [m for m in self.local_from if m not in LOCAL_NAMES]
        if bad or not self.local_from or len(set(self.local_from)) < len(self.local_from):
            raise ExperimentSetupError(f"local_from must be among {', '.join(LOCAL_NAMES)}, each once, got "
                                       f"{self.local_from!r}")
        for mode in self.feedback:  # a negative or NaN weight, before real_all and real_partial have trained
            try:
                self.node_recipe(mode)
            except ValueError as exc:
                raise ExperimentSetupError(f"feedback {mode}: {exc}") from None
        if (problem := device_problem(self.device)) is not None:
            raise ExperimentSetupError(problem)
        if self.data is not None:
            parse_test(self.test)
            if self.groups:
                parse_groups(self.groups)

    @property
    def gan_trainings(self) -> int:
        """GAN trainings per GAN method, each one synthetic set: no more than there are segmentation seeds to
        score them."""
        return max(1, min(self.gan_seeds, self.seeds))

    @property
    def gan_precision(self) -> str:
        """What the GANs run in here: ``auto`` resolved on this machine (results and caches record this)."""
        return resolve_precision(self.precision, self.device)

    @property
    def arithmetic_suffix(self) -> str:
        """``_bf16``, ``_cl`` or both for the GANs' arithmetic off the default (fp32, NCHW); "" at the default."""
        return ("_bf16" if self.gan_precision == "bf16" else "") + ("_cl" if self.channels_last else "")

    def single_scored_sets(self) -> str | None:
        """A warning when some GAN set is scored by one segmenter only: seed s trains on set s mod gan_seeds, and
        one segmenter's seed alone moved a synthetic set's validation IoU by up to 0.10 (session 21)."""
        sets = self.gan_trainings
        if self.quick or not (self.gan_methods or self.with_sync) or self.seeds >= 2 * sets:
            return None
        return (f"{self.seeds} segmentation seed(s) for {sets} GAN training(s) per method: some GAN sets are scored "
                f"by one segmenter, whose own seed can move a synthetic set's IoU by 0.1; --seeds {2 * sets} scores "
                "every set twice")

    def seg_config(self, source: str) -> SegConfig:
        """The segmenter's settings for ``source`` images: ``real`` pairs, a GAN's ``synthetic`` set alone, or the
        ``local`` department models' synthetic stage. They differ only in photometric jitter."""
        jitter = {"real": None, "synthetic": self.synthetic_photometric, "local": self.local_photometric}[source]
        return self.seg if jitter is None else replace(self.seg, photometric=jitter)

    def model(self) -> ModelConfig:
        return ModelConfig(image_size=self.size, num_classes=self.num_classes, g_width=self.g_width,
                           d_width=self.d_width)

    def recipe(self, mode: str) -> FeedbackConfig:
        d_lr, beta1 = (4e-4, 0.0) if self.oasis_optim else (2e-4, 0.5)
        return FeedbackConfig(FeedbackMode(mode), lambda_l1=self.lambda_l1, label_mix=self.label_mix,
                              lambda_semantic=self.lambda_semantic, lr=d_lr, beta1=beta1,
                              diffaugment=self.diffaugment, lambda_colour=self.lambda_colour)

    def node_recipe(self, mode: str, sync: bool = False) -> FeedbackConfig:
        """A DGAN node's recipe: the central GAN's (``recipe``) and the nodes' own D steps per feedback (``sync``:
        in a run of sync rounds)."""
        steps = default_d_steps(mode, sync) if self.d_steps is None else self.d_steps
        return replace(self.recipe(mode), d_steps=steps)

    def generator_steps(self, batches: int, mode: str, update_every: int = 1) -> int:
        """DGAN's generator steps for ``batches`` feedbacks: async steps once per ``update_every`` of them (0: one
        per node, buffered), sync once per round of every node."""
        return -(-batches // ((update_every or self.nodes) if mode == "async" else self.nodes))

    def snapshot_args(self, steps: int) -> dict[str, int]:
        """TrainConfig's snapshot settings for a GAN of ``steps`` generator steps: spread over its second half."""
        return {"snapshots": self.snapshots, "snapshot_every": max(1, steps // (2 * self.snapshots))} \
            if self.snapshots else {}

    def generator_optim(self) -> tuple[float, float]:
        """(lr, beta1) of the generator's Adam."""
        return (1e-4, 0.0) if self.oasis_optim else (2e-4, 0.5)
