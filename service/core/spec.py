"""The sweep spec: one pydantic model tree, strict about keys, with search-space primitives at any leaf.

A field typed ``Tunable[T]`` accepts either a plain ``T`` or one primitive whose values are
themselves validated as ``T`` (so ``filters: {grid: [64, -1]}`` fails on ``-1`` at load time):

    {grid: [a, b]}            every value, crossed with the other grids
    {choice: [a, b]}          one value per sample
    {uniform: [lo, hi]}       float (or int, for an int field) in [lo, hi]
    {loguniform: [lo, hi]}    log-scaled, lo > 0
    {randint: [lo, hi]}       integer in [lo, hi)  (Ray's convention: hi excluded)
    {quniform: [lo, hi, q]}   uniform rounded to a multiple of q

Trial configs are flat dicts keyed by dotted paths (``{"model.filters": 64}``); ``apply_overrides``
puts them back into a concrete spec. This module imports neither torch nor ray.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from service.core import storage
from service.core.record import BETTER, METRICS, Constraint

T = TypeVar("T")

PRIMITIVES = ("grid", "choice", "uniform", "loguniform", "randint", "quniform")

# ----------------------------------------------------------------------------- limits
# What a spec may hold, so that checking any spec costs bounded time and memory (the loader's own
# limits on bytes, nesting, nodes and integers are in service/core/loading.py).
MAX_LIST_ITEMS = 10_000  # values of one grid/choice (and items of any YAML list: the loader's check)
MAX_MUTATIONS = 64  # PBT mutations (each is checked by validating the spec with its values)
MAX_PATH_BYTES = 4096  # data.path (the OS's PATH_MAX), each of its names at most 255 bytes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class At:
    """One problem found by a validator, at ``path`` (keys below the validated model) rather than
    at the model itself, so that service/core/loading.py can give its dotted path and YAML line.
    ``related``: another place the message names; the loader adds that place's line to it."""

    path: tuple
    message: str
    related: tuple = ()
    # other places (paths below the validated model) the check read: when the loader had to set
    # one of them aside (it held an error of its own), the problem is not reported as found
    involves: tuple[tuple, ...] = ()

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.path)) or '(spec)'}: {self.message}"


class SpecProblems(ValueError):
    """Several problems at once, each at its own path (pydantic keeps this exception in the
    error's ``ctx``, where the loader finds it)."""

    def __init__(self, found: list[At]):
        self.found = list(found)
        super().__init__(" | ".join(str(at) for at in self.found))


# ----------------------------------------------------------------------------- search primitives
class Grid(_Strict, Generic[T]):
    grid: list[T] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


class Choice(_Strict, Generic[T]):
    choice: list[T] = Field(min_length=1, max_length=MAX_LIST_ITEMS)


def _check_numbers(what: str, *values: Any) -> None:
    """Range bounds must be finite numbers (a PBT mutation's values are typed Any)."""
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{what}: the bounds must be numbers, got {short_repr(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{what}: the bounds must be finite numbers, got {value}")


def _check_range(lo: float, hi: float, what: str) -> None:
    _check_numbers(what, lo, hi)
    if not lo < hi:
        raise ValueError(f"{what}: lo must be < hi, got lo={lo}, hi={hi}")


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for messages (a value may be 1 MiB long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...(" + f"{len(text):,} chars)"


class Uniform(_Strict, Generic[T]):
    uniform: tuple[T, T]

    @model_validator(mode="after")
    def _ordered(self):
        _check_range(*self.uniform, "uniform")
        return self


class LogUniform(_Strict, Generic[T]):
    loguniform: tuple[T, T]

    @model_validator(mode="after")
    def _ordered_positive(self):
        lo, hi = self.loguniform
        _check_range(lo, hi, "loguniform")
        if lo <= 0:
            raise ValueError(f"loguniform: lo must be > 0 (log scale), got {lo}")
        return self


class RandInt(_Strict, Generic[T]):
    randint: tuple[int, int]

    @model_validator(mode="after")
    def _ordered(self):
        _check_range(*self.randint, "randint")
        return self


class QUniform(_Strict, Generic[T]):
    quniform: tuple[T, T, T]

    @model_validator(mode="after")
    def _ordered(self):
        lo, hi, q = self.quniform
        _check_range(lo, hi, "quniform")
        _check_numbers("quniform", q)
        if q <= 0:
            raise ValueError(f"quniform: q must be > 0, got {q}")
        return self


def _primitive_tag(value: Any) -> str:
    """Route a raw value to the right union member, so errors name one branch, not all seven."""
    if isinstance(value, dict) and len(value) == 1:
        (key,) = value
        if key in PRIMITIVES:
            return key
    if isinstance(value, BaseModel):
        for key in PRIMITIVES:
            if key in type(value).model_fields:
                return key
    return "value"


class _TunableFactory:
    def __getitem__(self, t):
        return Annotated[
            Union[
                Annotated[t, Tag("value")],
                Annotated[Grid[t], Tag("grid")],
                Annotated[Choice[t], Tag("choice")],
                Annotated[Uniform[t], Tag("uniform")],
                Annotated[LogUniform[t], Tag("loguniform")],
                Annotated[RandInt[t], Tag("randint")],
                Annotated[QUniform[t], Tag("quniform")],
            ],
            Discriminator(_primitive_tag),
        ]


Tunable = _TunableFactory()
"""``Tunable[int]``: an int, or a search primitive over ints."""

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]

# ----------------------------------------------------------------------------- data
ON_DISK = ("mnist", "fashion_mnist", "cifar10", "cifar100")  # read from data.path in the official format


class HFlip(_Strict):
    name: Literal["hflip"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.5  # probability per image


class VFlip(_Strict):
    name: Literal["vflip"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.5  # probability per image


class RandomCrop(_Strict):
    name: Literal["random_crop"]
    padding: Annotated[int, Field(ge=1)] = 4  # pixels of zero padding on each side before cropping


class Rotation(_Strict):
    name: Literal["rotation"]
    degrees: Annotated[float, Field(gt=0, le=180)] = 15  # uniform in [-degrees, +degrees]


class ColorJitter(_Strict):
    """Per-image factors drawn uniformly from [1 - x, 1 + x] (x = 0: unchanged)."""

    name: Literal["color_jitter"]
    brightness: Annotated[float, Field(ge=0, lt=1)] = 0.2
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.2
    saturation: Annotated[float, Field(ge=0, lt=1)] = 0.2  # colour images only


class Affine(_Strict):
    name: Literal["affine"]
    translate: Annotated[float, Field(ge=0, lt=1)] = 0.1  # max shift, fraction of width/height
    scale: tuple[PositiveFloat, PositiveFloat] = (0.9, 1.1)  # zoom factor range
    shear: Annotated[float, Field(ge=0, lt=90)] = 0  # max shear, degrees


def _bare_name(value: Any) -> Any:
    """``hflip`` for ``{name: hflip}``: an augmentation with its defaults, written by name alone."""
    return {"name": value} if isinstance(value, str) else value


Augmentation = Annotated[
    Union[HFlip, VFlip, RandomCrop, Rotation, ColorJitter, Affine], Field(discriminator="name"),
    BeforeValidator(_bare_name),
]


class _DataCommon(_Strict):
    """What every dataset takes. Each kind of dataset is its own class (``DataSpec``, by ``name``),
    so that a resolved spec (spec.yaml, a RayJob's, a model card) holds only what applies to it."""

    name: str  # each class's Literal (here: first in every dump)
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1  # of the official training split
    val_split: Literal["random", "stratified"] = "random"  # stratified: same class mix as train
    # applied to training batches only, never to validation; each {name: ..., params} or a bare name
    augment: Tunable[list[Augmentation]] = []

    @model_validator(mode="before")
    @classmethod
    def _older_defaults(cls, data: Any) -> Any:
        return _without_older_defaults(cls, data, _DATA_DEFAULTS_BEFORE_UNIONS)


# What a spec.yaml written before the data union held for every dataset (each field's default):
# dropped where it does not apply, so that a stored sweep's spec validates as before.
_DATA_DEFAULTS_BEFORE_UNIONS = {"path": None, "sha256": None, "download": False, "num_samples": 2048,
                                "image_size": 16, "channels": 3, "num_classes": 10}


def _without_older_defaults(cls: type[BaseModel], data: Any, defaults: dict) -> Any:
    """``data`` without the fields ``cls`` lacks whose value is the default they had before the
    section became a union; any other value of them stays (and is refused as not applying)."""
    if not isinstance(data, dict):
        return data
    def the_default(key: str, value: Any) -> bool:  # 3.0 is reduction_factor's 3 (dumped as a float); True is not 1
        return value == defaults[key] and isinstance(value, bool) == isinstance(defaults[key], bool)

    return {k: v for k, v in data.items() if k in cls.model_fields or k not in defaults or not the_default(k, v)}


class SyntheticDataSpec(_DataCommon):
    name: Literal["synthetic"]  # a class-dependent pattern plus noise, generated from the seed
    num_samples: PositiveInt = 2048  # train+val images (a test split of the same size/4 is added)
    image_size: PositiveInt = 16  # pixels per side
    channels: PositiveInt = 3
    num_classes: Annotated[int, Field(ge=2)] = 10


class DigitsDataSpec(_DataCommon):
    name: Literal["digits"]  # scikit-learn's bundled 8×8 digits: no files, no download


class FileDataSpec(_DataCommon):
    name: Literal["mnist", "fashion_mnist", "cifar10", "cifar100"]
    # a local directory or file, or s3://bucket/key (fetched once per node into the cache), in the
    # dataset's official format (CIFAR python pickles or their .tar.gz, MNIST idx files, gzipped or not).
    path: str | None = None
    sha256: str | None = None  # of the file at `path` (an archive), checked before it is read
    download: bool = False  # fetch the official files into `path` with torchvision when missing

    @field_validator("path")
    @classmethod
    def _a_usable_path(cls, path: str | None) -> str | None:
        """What the OS can look up: no NUL, valid Unicode, at most PATH_MAX bytes and NAME_MAX per name."""
        if path is None:
            return path
        if "\x00" in path:
            raise ValueError("data.path must not contain a NUL character")
        try:
            size = len(path.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("data.path is not valid Unicode (a lone surrogate escape)") from None
        if size > MAX_PATH_BYTES:
            raise ValueError(f"data.path is {size:,} bytes long: at most {MAX_PATH_BYTES}")
        if any(len(name.encode("utf-8")) > 255 for name in path.split("/")):
            raise ValueError("data.path has a name longer than 255 bytes (the most a file name may have)")
        return path

    @model_validator(mode="after")
    def _path_where_needed(self):
        found = []
        if not self.path:
            found.append(At(("path",), (
                f"data.path is required for {self.name}: a local directory/file or s3:// URI with the "
                "official files (set data.download: true to fetch them into a local data.path)"
            ), involves=(("name",),)))
        if self.download and self.path and "://" in self.path and not self.path.startswith("file://"):
            found.append(At(("download",), "data.download needs a local data.path to download into", involves=(("path",),)))
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            found.append(At(("sha256",), "data.sha256 must be 64 lowercase hex digits"))
        if found:
            raise SpecProblems(found)
        return self



DataSpec = Annotated[Union[SyntheticDataSpec, DigitsDataSpec, FileDataSpec], Field(discriminator="name")]
DATA_SPEC = TypeAdapter(DataSpec)


def data_spec(**fields: Any) -> DataSpec:
    """The data section's class for ``fields["name"]``, validated: data_spec(name="digits")."""
    return DATA_SPEC.validate_python(fields)


# ----------------------------------------------------------------------------- models
Activation = Literal["relu", "leaky_relu", "elu", "silu", "gelu", "sigmoid", "tanh"]


class MLPSpec(_Strict):
    """Fully connected net. Widths: an explicit list, or a schedule from the input size down."""

    name: Literal["mlp"]
    hidden_sizes: Tunable[list[PositiveInt]] | None = None  # units per hidden layer (default [256, 128])
    # halve/quarter: each hidden layer has 1/2 (1/4) the width of the one before, starting from
    # the flattened input size, while wider than the number of classes (at most num_layers layers).
    width_schedule: Tunable[Literal["halve", "quarter"]] | None = None
    num_layers: Tunable[PositiveInt] = 4  # cap on hidden layers for width_schedule
    residual: Tunable[bool] = False  # skip connection around every hidden layer (projected if widths differ)
    activation: Tunable[Activation] = "relu"
    dropout: Tunable[Fraction] = 0.0  # probability
    batchnorm: Tunable[bool] = False

    @model_validator(mode="after")
    def _one_width_rule(self):
        if self.hidden_sizes is not None and self.width_schedule is not None:
            raise SpecProblems([At(("width_schedule",), "give either hidden_sizes or width_schedule, not both",
                                   involves=(("hidden_sizes",),))])
        return self


class CNNSpec(_Strict):
    """Seed 000's configurable CNN: conv blocks (conv→[bn]→act→pool) then a fully connected head."""

    name: Literal["cnn"]
    num_conv_layers: Tunable[PositiveInt] = 2
    filters: Tunable[PositiveInt] = 64  # output channels of every conv layer
    kernel_size: Tunable[PositiveInt] = 3  # pixels
    padding: Tunable[Literal["same", "valid"]] = "same"
    num_fc_layers: Tunable[PositiveInt] = 2  # including the output layer
    hidden_size: Tunable[PositiveInt] = 128  # units of each hidden fc layer
    batchnorm: Tunable[bool] = False
    dropout: Tunable[Fraction] = 0.0  # probability, before each hidden fc layer
    residual: Tunable[bool] = False  # identity skip around conv layers 2..n
    activation: Tunable[Activation] = "relu"


class CIFAR10NetSpec(_Strict):
    """Seed 001's net: (conv→bn→relu→pool) ×2, then 3 fully connected layers with bn and dropout."""

    name: Literal["cifar10net"]
    conv_channels: Tunable[list[PositiveInt]] = [32, 64]  # output channels of the two conv blocks
    fc1: Tunable[PositiveInt] = 256  # units
    fc2: Tunable[PositiveInt] = 128  # units
    dropout: Tunable[Fraction] = 0.5  # probability, after each hidden fc layer
    activation: Tunable[Activation] = "relu"


class SmallResNetSpec(_Strict):
    """Seed 002's residual CNN for CIFAR-100: stem → residual block (h_1) → downsample → residual
    block (h_2) → global average pool → dropout → linear."""

    name: Literal["small_resnet"]
    h_1: Tunable[PositiveInt] = 64  # channels of the first stage
    h_2: Tunable[PositiveInt] = 128  # channels of the second stage
    dropout: Tunable[Fraction] = 0.2  # probability, before the classifier
    activation: Tunable[Activation] = "relu"


class ResNetSpec(_Strict):
    """torchvision ResNet-18/34/50, trained from scratch or transferred (frozen backbone or finetuned)."""

    name: Literal["resnet"]
    depth: Tunable[Literal[18, 34, 50]] = 18
    cifar_stem: Tunable[bool] = False  # 3x3 stride-1 stem, no max-pool: for 32x32 inputs from scratch
    # scratch/finetune: train everything; frozen: train the head only (backbone weights fixed)
    mode: Tunable[Literal["scratch", "frozen", "finetune"]] = "scratch"
    pretrained: Literal["none", "imagenet"] = "none"  # imagenet: torchvision's weights (needs network)
    weights_uri: str | None = None  # backbone state_dict (local path or s3://), loaded weights_only
    head: Tunable[Literal["linear", "mlp"]] = "linear"
    head_widths: Tunable[list[PositiveInt]] = [256]  # mlp head: units per hidden layer
    head_activation: Tunable[Activation] = "relu"
    head_dropout: Tunable[Fraction] = 0.0  # probability, before each head layer
    resize: PositiveInt | None = None  # upsample inputs to resize×resize pixels (e.g. 224) first

    @model_validator(mode="after")
    def _one_weight_source(self):
        # (frozen with neither is allowed: a random-features baseline, and a download-free smoke test)
        if self.pretrained == "imagenet" and self.weights_uri:
            raise SpecProblems([At(("weights_uri",), "give either pretrained: imagenet or weights_uri, not both",
                                   involves=(("pretrained",),))])
        return self


ModelSpec = Annotated[
    Union[MLPSpec, CNNSpec, CIFAR10NetSpec, SmallResNetSpec, ResNetSpec], Field(discriminator="name")
]


# ----------------------------------------------------------------------------- training
class OptimizerSpec(_Strict):
    name: Tunable[Literal["sgd", "adam", "adamw", "adagrad", "adadelta"]] = "adam"
    lr: Tunable[PositiveFloat] = 1.0e-3  # learning rate per step (adadelta: a scale, usually 1.0)
    momentum: Tunable[Annotated[float, Field(ge=0, lt=1)]] = 0.9  # sgd only
    nesterov: Tunable[bool] = False  # sgd only (needs momentum > 0)
    weight_decay: Tunable[Annotated[float, Field(ge=0)]] = 0.0  # L2 coefficient per step


class LRScheduleSpec(_Strict):
    """Stepped once per epoch, except onecycle (once per batch)."""

    name: Tunable[Literal["none", "exponential", "cosine", "onecycle", "step"]] = "none"
    gamma: Tunable[Annotated[float, Field(gt=0, le=1)]] = 0.9  # exponential/step: factor per decay
    step_size: PositiveInt = 10  # step: epochs between decays
    max_lr: Tunable[PositiveFloat] | None = None  # onecycle: peak lr (default 10 × optimizer.lr)


class TrainSpec(_Strict):
    epochs: Tunable[PositiveInt] = 10  # also the scheduler's max_t
    batch_size: Tunable[PositiveInt] = 64  # images per step per worker
    # an optimizer, or a grid/choice over whole optimizers, each with its own primitives (a
    # conditional space: {choice: [{name: sgd, momentum: {uniform: [...]}}, {name: adam}]})
    optimizer: Tunable[OptimizerSpec] = OptimizerSpec()
    lr_schedule: LRScheduleSpec = LRScheduleSpec()
    label_smoothing: Tunable[Annotated[float, Field(ge=0, lt=1)]] = 0.0  # cross-entropy target smoothing
    # auto: bf16 on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16/AMX), fp16 on older
    # GPUs, fp32 elsewhere (emulated bf16 is several times slower than fp32). Unquoted `off`/`on`
    # (YAML 1.1 booleans, as are no/yes/false/true): off/false → "off"; on/true → "auto", i.e.
    # mixed precision wherever the hardware runs it fast (fp32 where it would only be slower).
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "auto" if value else "off"
        return "auto" if value == "on" else value


# ----------------------------------------------------------------------------- search
MAX_WARM_START_SWEEPS = 16


def _earlier_sweep(ref: str) -> str:
    """A warm start's sweep: a NAME in this spec's storage, or the sweep's own URI (its storage
    and name: s3://bucket/prefix/NAME, file:///runs/NAME, runs/NAME)."""
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(DNS1123, name) or len(name) > 40:
        raise ValueError(f"{short_repr(ref)} is not a sweep: give a sweep's name (lowercase letters, digits, '-') "
                         "or its URI, s3://bucket/prefix/NAME or a path ending in its name")
    if "/" in ref.rstrip("/"):
        known_storage_scheme(ref)
    return ref


class WarmStartSpec(_Strict):
    # Earlier sweeps whose finished trials this one starts from: the TPE searchers (optuna,
    # hyperopt) are told their results, grid/random skip a configuration one of them evaluated and
    # copy its trial into the record, marked as copied. Their space, data and training must match
    # this spec's (service/core/warm_start.py says what differs).
    sweeps: Annotated[list[Annotated[str, Field(max_length=1024), AfterValidator(_earlier_sweep)]],
                      Field(min_length=1, max_length=MAX_WARM_START_SWEEPS)]


class SearchSpec(_Strict):
    # grid/random: Tune's variant generator; optuna/hyperopt: TPE, proposing from past results.
    algorithm: Literal["grid", "random", "optuna", "hyperopt"] = "grid"
    num_samples: PositiveInt = 1  # grid: repeats of the whole grid; otherwise: number of trials
    warm_start: WarmStartSpec | None = None

    @model_serializer(mode="wrap")
    def _no_empty_warm_start(self, handler):
        """A spec without a warm start dumps no key for it (a spec.yaml an older sweepctl reads)."""
        data = handler(self)
        if isinstance(data, dict) and self.warm_start is None:
            data.pop("warm_start", None)
        return data


class _SchedulerCommon(_Strict):
    """Each trial scheduler is its own class (``SchedulerSpec``, by ``name``): a resolved spec holds
    only what its scheduler takes. Schedulers count time in epochs."""

    name: str  # each class's Literal (here: first in every dump)

    @model_validator(mode="before")
    @classmethod
    def _older_defaults(cls, data: Any) -> Any:
        return _without_older_defaults(cls, data, _SCHEDULER_DEFAULTS_BEFORE_UNIONS)

    def mutated(self) -> dict[str, Any]:
        """What the scheduler changes in a trial's config as it trains (dotted spec path →
        distribution): PBT's mutations; nothing for the others."""
        return {}


# What a spec.yaml written before the scheduler union held for every scheduler (the defaults).
_SCHEDULER_DEFAULTS_BEFORE_UNIONS = {"grace_period": 1, "reduction_factor": 3, "brackets": 1, "min_samples": 3,
                                     "perturbation_interval": 2, "quantile": 0.25, "mutations": {}, "synchronous": True}


class FIFOSchedulerSpec(_SchedulerCommon):
    name: Literal["fifo"] = "fifo"  # every trial runs all its epochs


class ASHASchedulerSpec(_SchedulerCommon):
    name: Literal["asha"]
    grace_period: PositiveInt = 1  # epochs every trial gets before it can be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 3  # keep 1/rf of the trials per rung
    brackets: PositiveInt = 1


class HyperBandSchedulerSpec(_SchedulerCommon):
    name: Literal["hyperband"]
    reduction_factor: Annotated[float, Field(gt=1)] = 3  # keep 1/rf of the trials per rung


class MedianSchedulerSpec(_SchedulerCommon):
    name: Literal["median"]
    grace_period: PositiveInt = 1  # epochs every trial gets before it can be stopped
    min_samples: PositiveInt = 3  # trials that must report an epoch before comparing


class PBTSchedulerSpec(_SchedulerCommon):
    name: Literal["pbt"]
    # every perturbation_interval epochs, the bottom `quantile` of trials copy the weights and
    # optimizer state of a top-quantile trial and continue with mutated hyperparameters.
    perturbation_interval: PositiveInt = 2  # epochs
    quantile: Annotated[float, Field(gt=0, le=0.5)] = 0.25  # fraction of the population
    mutations: Annotated[dict[str, Tunable[Any]], Field(max_length=MAX_MUTATIONS)] = {}  # dotted spec path -> choice/uniform/...
    # synchronous: every trial reaches the perturbation epoch before any exploit, so which trial
    # copies which does not depend on timing (and trials need not run side by side).
    synchronous: bool = True

    def mutated(self) -> dict[str, Any]:
        return self.mutations

    @field_validator("mutations")
    @classmethod
    def _sampled(cls, mutations: dict) -> dict:
        odd = [short_repr(path) for path in mutations if not _MUTATION_PATH.fullmatch(path)]
        if odd:
            raise ValueError(f"mutations {', '.join(odd)}: a mutation is named by a dotted spec path, e.g. train.optimizer.lr")
        fixed = [path for path, value in mutations.items() if _primitive_tag(value) in ("value", "grid")]
        if fixed:
            raise ValueError(
                f"mutations {fixed} need a distribution to resample from: "
                "{choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}"
            )
        return mutations




def _scheduler_tag(value: Any) -> str | None:
    """A scheduler without a name is FIFO (as before the union: its default)."""
    if isinstance(value, dict):
        return value.get("name", "fifo")
    return getattr(value, "name", None)


SchedulerSpec = Annotated[
    Union[Annotated[FIFOSchedulerSpec, Tag("fifo")], Annotated[ASHASchedulerSpec, Tag("asha")],
          Annotated[HyperBandSchedulerSpec, Tag("hyperband")], Annotated[MedianSchedulerSpec, Tag("median")],
          Annotated[PBTSchedulerSpec, Tag("pbt")]],
    Discriminator(_scheduler_tag),
]


_MUTATION_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,15}")

def unknown_metric(name: str) -> str:
    """The message for a metric the loop does not report, with the closest ones and every one."""
    import difflib

    close = difflib.get_close_matches(name, METRICS, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown metric {short_repr(name)}{hint}: the training loop reports {', '.join(METRICS)}"


class ObjectiveSpec(_Strict):
    # Any metric the loop reports (service/core/record.py's EpochResult: accuracies, losses, params,
    # train_seconds, inference_ms, ...).
    metric: str = "val_acc"
    mode: Literal["max", "min"] | None = None  # default: the metric's natural direction (BETTER)

    @field_validator("metric")
    @classmethod
    def _reported(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(unknown_metric(metric))
        return metric

    @model_validator(mode="after")
    def _sensible_mode(self):
        natural = BETTER.get(self.metric)
        if self.mode is None and natural is None:
            raise SpecProblems([At(("mode",), f"{self.metric} has no natural direction: give mode: max or mode: min",
                                   involves=(("metric",),))])
        if self.mode is None:
            object.__setattr__(self, "mode", natural)
        elif natural is not None and self.mode != natural:
            raise SpecProblems([At(("mode",), f"{self.metric} should be {natural}imized, not {self.mode}imized",
                                   involves=(("metric",),))])
        return self


# "metric op number": params <= 2e6, inference_ms < 5, val_acc >= 0.9
_CONSTRAINT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


def parse_constraint(text: str) -> Constraint:
    """``"params <= 2e6"`` → Constraint(metric="params", op="<=", bound=2e6). ValueError saying what
    is wrong otherwise (the form, or a metric the loop does not report)."""
    match = _CONSTRAINT.fullmatch(text)
    if match is None:
        raise ValueError(f"{short_repr(text)} is not 'metric op number' (op: <=, <, >=, >), e.g. 'params <= 2e6'")
    metric, op, bound = match.groups()
    if metric not in METRICS:
        raise ValueError(unknown_metric(metric))
    return Constraint(metric=metric, op=op, bound=float(bound), text=" ".join(match.groups()))


def _checked_constraint(text: str) -> str:
    parse_constraint(text)
    return text


ConstraintText = Annotated[str, Field(max_length=200), AfterValidator(_checked_constraint)]
# Schedulers that stop or exploit trials by one metric: in a multi-objective sweep, the first.
ONE_METRIC_SCHEDULERS = ("asha", "hyperband", "median", "pbt")


class ResourcesSpec(_Strict):
    workers_per_trial: PositiveInt = 1  # >1: data-parallel DDP under Ray Train
    cpus_per_worker: PositiveFloat = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0
    max_concurrent_trials: PositiveInt | None = None  # default: as many as resources allow
    max_failures: Annotated[int, Field(ge=0)] = 2  # restarts of a crashed trial, from its last checkpoint


class StorageSpec(_Strict):
    # Where the spec, the sweep record, logs and checkpoints go: file://PATH, a plain path,
    # or s3://bucket/prefix (any S3-compatible store; endpoint and credentials come from the AWS
    # environment variables, never from the spec).
    uri: str = "file://./runs"

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        return known_storage_scheme(uri)


def known_storage_scheme(uri: str) -> str:
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    if scheme == "s3":
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"{short_repr(uri)} needs a bucket name (3-63 lowercase letters, digits, '.', '-'): s3://bucket/prefix")
    elif scheme != "file":
        raise ValueError(f"unsupported storage scheme {scheme!r}: use s3://bucket/prefix, file://PATH or a plain path")
    return uri


class CheckpointSpec(_Strict):
    every: PositiveInt = 1  # epochs between checkpoints (the last epoch is always saved)
    keep: PositiveInt | None = 2  # best checkpoints kept per trial (by the objective); None keeps all


class MetricsSpec(_Strict):
    # The sweep driver's Prometheus exporter (http://HOST:PORT/metrics); 0 turns it off.
    port: Annotated[int, Field(ge=0, le=65535)] = 9500


class ReportSpec(_Strict):
    # The sweep's report (report/report.html under its storage: service/analysis/report.py), written
    # by the driver once the last trial has ended, when the sweep finished (not when it was
    # interrupted, cancelled or failed). A report that fails is one line in the driver log and
    # changes nothing else; `sweepctl report NAME` writes it again. false: only that command does.
    auto: bool = True


DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class SweepSpec(_Strict):
    name: Annotated[str, Field(max_length=40, pattern=DNS1123)]
    # fixes the train/val split, model init, data order and the searcher (0 .. 2**32-1: the range
    # numpy's RandomState, which seeds Ray's grid/random searcher, accepts)
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    data: DataSpec
    # a model, or a grid/choice over whole models, each with its own primitives or none:
    # {grid: [{name: mlp, ...}, {name: cnn, filters: {grid: [8, 16]}}]} (see conditional_sections)
    model: Tunable[ModelSpec]
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = FIFOSchedulerSpec()
    # The one objective; with ``objectives`` (exclusive), the first of them (set from it, and not
    # written back: a dumped spec holds objectives only).
    objective: ObjectiveSpec = ObjectiveSpec()
    # Several objectives: a multi-objective search (Optuna), the record keeps their Pareto front.
    objectives: Annotated[list[ObjectiveSpec], Field(min_length=2, max_length=8)] | None = None
    # "metric op number" each (params <= 2e6): a trial breaking one is infeasible, never ranked;
    # one on params is checked before the trial trains (and a trial breaking it never trains).
    constraints: Annotated[list[ConstraintText], Field(max_length=32)] = []
    resources: ResourcesSpec = ResourcesSpec()
    storage: StorageSpec = StorageSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    metrics: MetricsSpec = MetricsSpec()
    report: ReportSpec = ReportSpec()

    @model_validator(mode="after")
    def _first_objective(self):
        if self.objectives:  # (both given: spec_wide_problems says so)
            object.__setattr__(self, "objective", self.objectives[0])
        return self

    @model_serializer(mode="wrap")
    def _objectives_only(self, handler):
        """A multi-objective spec dumps ``objectives`` only (its ``objective`` is their first), so
        that what is dumped validates again (spec.yaml, a trial's spec); a spec without objectives or
        constraints dumps neither key, as before they existed (a spec.yaml an older sweepctl reads)."""
        data = handler(self)
        if isinstance(data, dict):
            if self.objectives:
                data.pop("objective", None)
            else:
                data.pop("objectives", None)
            if not self.constraints:
                data.pop("constraints", None)
        return data

    @model_validator(mode="after")
    def _runs_as_written(self, info: ValidationInfo):
        """Everything that would fail or mislead only once trials run, reported together, each at
        the key it is about (see ``spec_wide_problems``). The trial cap comes in the validation
        context (``{"max_trials": N}``, what service/core/loading.py passes); without it, no cap."""
        max_trials = (info.context or {}).get("max_trials") if info is not None else None
        found = spec_wide_problems(self, max_trials)
        if found:
            raise SpecProblems(found)
        return self


def _at(dotted: str) -> tuple:
    return tuple(dotted.split("."))


def spec_wide_problems(spec: SweepSpec, max_trials: int | None = None) -> list[At]:
    """Every check that spans sections (search vs space, scheduler vs epochs, PBT rules, the trial
    count), all of them, each at its most relevant key, with the other keys it read in ``involves``."""
    found: list[At] = []
    space = search_space(spec)
    # every primitive, those inside the branches of a conditional section too, by where it is
    # written (train.optimizer.choice[0].momentum) and its path in the spec
    inner = branches(spec)
    where = {path: _at(path) for path in space}
    where.update({b.name_of(key): b.field_at(key) for b in inner for key in b.space})
    every = {**space, **{b.name_of(key): p for b in inner for key, p in b.space.items()}}
    sampled = [path for path, p in every.items() if not isinstance(p, Grid)]
    grids = [path for path, p in every.items() if isinstance(p, Grid)]
    algorithm, scheduler = spec.search.algorithm, spec.scheduler
    if algorithm == "grid" and sampled:
        found.append(At(("search", "algorithm"), (
            f"search.algorithm 'grid' needs {{grid: [...]}} everywhere, but {sampled} are "
            "sampled: use search.algorithm: random, or list the values with grid"
        ), involves=tuple(where[p] for p in sampled)))
    if algorithm in ("optuna", "hyperopt") and grids:
        found.append(At(("search", "algorithm"), (
            f"search.algorithm {algorithm!r} samples every value, it cannot walk a grid: "
            f"write {grids} as {{choice: [...]}}"
        ), involves=tuple(where[p] for p in grids)))
    if algorithm == "random":
        found += _grids_in_drawn_branches(spec)
    if scheduler.name in ("asha", "median") and scheduler.grace_period > max_epochs(spec):
        found.append(At(("scheduler", "grace_period"), (
            f"scheduler.grace_period ({scheduler.grace_period}) exceeds train.epochs "
            f"({max_epochs(spec)}): no trial could ever be stopped early"
        ), involves=(("scheduler", "name"), ("train", "epochs"))))
    if scheduler.name == "pbt":
        found += _pbt_problems(spec, [p for p in grids if p in space])
    found += _objectives_problems(spec)
    found += _warm_start_problems(spec)
    if max_trials is not None:
        too_many = trial_count_problem(spec, max_trials)
        if too_many is not None:
            found.append(too_many)
    return found


def _warm_start_problems(spec: SweepSpec) -> list[At]:
    """What a warm start cannot do, known from the spec alone (whether the earlier sweeps exist and
    match is trainer/driver/warm_start.py's, once storage can be read)."""
    if spec.search.warm_start is None:
        return []
    found = []
    if spec.scheduler.name == "pbt":
        found.append(At(("search", "warm_start"), (
            "scheduler 'pbt' trains its population together and changes their configs as it goes: "
            "earlier trials cannot join it. Drop search.warm_start, or use another scheduler"),
            involves=(("scheduler", "name"),)))
    for i, ref in enumerate(spec.search.warm_start.sweeps):
        if earlier_sweep_location(ref, spec.storage.uri) == (_normal_uri(spec.storage.uri), spec.name):
            found.append(At(("search", "warm_start", "sweeps", i), (
                f"{short_repr(ref)} is this sweep: a warm start reads earlier sweeps (to continue this one: "
                f"sweepctl resume {spec.name})")))
    return found


def earlier_sweep_location(ref: str, storage_uri: str) -> tuple[str, str]:
    """(storage URI, sweep name) of a warm start's sweep: a NAME is in ``storage_uri``."""
    ref = ref.rstrip("/")
    if "/" not in ref:
        return _normal_uri(storage_uri), ref
    parent, name = ref.rsplit("/", 1)
    return _normal_uri(parent if parent not in ("", "file:/", "file://") else "/"), name


def _normal_uri(uri: str) -> str:
    return storage.normalize(uri)


def _objectives_problems(spec: SweepSpec) -> list[At]:
    """Several objectives: distinct metrics, and a searcher that handles several (Optuna)."""
    if not spec.objectives:
        return []
    found, seen = [], {}
    if "objective" in spec.model_fields_set:
        found.append(At(("objective",), "give either objective (one) or objectives (several), not both",
                        involves=(("objectives",),)))
    for i, objective in enumerate(spec.objectives):
        if objective.metric in seen:
            found.append(At(("objectives", i, "metric"), (
                f"{objective.metric} is objectives[{seen[objective.metric]}] already: each objective names "
                "another metric"), involves=(("objectives", seen[objective.metric], "metric"),)))
        seen.setdefault(objective.metric, i)
    if spec.search.algorithm != "optuna":
        found.append(At(("objectives",), (
            f"several objectives need search.algorithm: optuna (its samplers search for the Pareto front); "
            f"{spec.search.algorithm!r} ranks trials by one number: set search.algorithm: optuna, "
            "or keep one objective"), involves=(("search", "algorithm"),)))
    return found


def spec_notes(spec: SweepSpec) -> list[str]:
    """What a valid spec does that its author may not expect: printed by `sweepctl validate` and
    `sweepctl run`, not errors."""
    notes = []
    if spec.objectives and spec.scheduler.name in ONE_METRIC_SCHEDULERS:
        first = spec.objectives[0]
        notes.append(f"scheduler {spec.scheduler.name} judges trials by {first.metric}, the first objective "
                     f"({first.mode}): it stops trials that are behind on {first.metric} alone")
    return notes


def _pbt_problems(spec: SweepSpec, grids: list[str]) -> list[At]:
    scheduler, found = spec.scheduler, []
    if spec.search.algorithm in ("optuna", "hyperopt"):
        found.append(At(("scheduler", "name"), "scheduler 'pbt' changes configs during training: use search grid or random",
                        involves=(("search", "algorithm"),)))
    conditional = list(conditional_sections(spec))
    if conditional:
        found.append(At(("scheduler", "name"), (
            f"scheduler 'pbt' cannot run a conditional search space ({', '.join(conditional)}: search "
            "primitives inside the branches): an exploit copies a donor's config, perhaps of another branch, "
            "and mutates it; use scheduler fifo, asha, hyperband or median, or list plain branches"
        ), involves=tuple(b.field_at(next(iter(b.space))) for b in branches(spec) if b.space)[:1]))
    if not scheduler.mutations:
        found.append(At(("scheduler", "mutations"), "scheduler 'pbt' needs scheduler.mutations (dotted path -> distribution)",
                        involves=(("scheduler", "name"),)))
    if scheduler.perturbation_interval % spec.checkpoint.every:
        found.append(At(("scheduler", "perturbation_interval"), (
            f"scheduler.perturbation_interval ({scheduler.perturbation_interval}) must be a multiple "
            f"of checkpoint.every ({spec.checkpoint.every}): PBT copies weights from checkpoints"
        ), involves=(("checkpoint", "every"), ("scheduler", "name"))))
    if spec.checkpoint.keep is not None and spec.checkpoint.keep < 3:
        found.append(At(("checkpoint", "keep"), (
            f"scheduler 'pbt' with checkpoint.keep={spec.checkpoint.keep}: a donor's checkpoint "
            "could be deleted before another trial copies it; keep at least 3 (or null: all)"
        ), involves=(("scheduler", "name"),)))
    population, cap = num_trials(spec), spec.resources.max_concurrent_trials
    if scheduler.synchronous and cap and cap < population:
        found.append(At(("resources", "max_concurrent_trials"), (
            f"synchronous PBT waits for all {population} trials at every perturbation, but "
            f"resources.max_concurrent_trials={cap} never starts them all: raise it to "
            f"{population}, remove it, or set scheduler.synchronous: false"
        ), involves=(("scheduler", "name"), ("scheduler", "synchronous"), ("search", "num_samples"),
                     *(_at(p) for p in grids))))
    found += pbt_mutation_problems(spec)
    reshaping = {at.path for at in found}
    found += [at for at in _mutation_value_problems(spec) if at.path not in reshaping]
    return found


# ----------------------------------------------------------------------------- PBT mutations
# A PBT exploit loads the donor's checkpoint into the trial: its state_dict, its optimizer state and
# its GradScaler state (trainer/loop.py), which must fit the trial's model and optimizer as built
# from the trial's mutated config. So a mutation may only touch what owns no parameters: dropout
# probabilities (above 0: a dropout of 0 builds the model without its Dropout layers, renumbering
# the layers after them) and activations (none of ours has parameters). Every other model field
# decides parameter shapes or names (widths, depth, kernel, padding, batchnorm, residual, name,
# resize, ...) or which parameters train (resnet mode); tests/service/test_spec.py checks these
# two sets against the real models.
PBT_MUTABLE_MODEL_FIELDS = ("dropout", "head_dropout", "activation", "head_activation")
_DROPOUT_FIELDS = ("dropout", "head_dropout")
# Outside model.*: what changes the input or output shape, or the state a checkpoint restores.
_PBT_FIXED = {
    "data": "decides the input shape and the number of classes",
    "data.name": "decides the input shape and the number of classes",
    "data.image_size": "is the input shape",
    "data.channels": "is the input shape",
    "data.num_classes": "is the output layer's shape",
    "train": "holds the optimizer, whose state an exploit restores",
    "train.optimizer": "decides the optimizer, whose state an exploit restores (into the same optimizer only)",
    "train.optimizer.name": "decides the optimizer, whose state an exploit restores (into the same optimizer only)",
    "train.amp": "decides the fp16 loss scaler, whose state an exploit restores (the other modes have none)",
}


def pbt_mutation_problems(spec: SweepSpec) -> list[At]:
    """Every PBT mutation that would break an exploit (shapes that differ from the donor's) or
    contradict the search, each at scheduler.mutations.PATH. A grid over a mutated value (or over a
    section holding it) contradicts it: a grid compares fixed values, which PBT then changes. A
    sampled start ({uniform: ...}, {choice: ...}) is how a PBT population begins, and is fine."""
    if spec.scheduler.name != "pbt":
        return []
    found = []
    space = search_space(spec)
    for path, primitive in spec.scheduler.mutations.items():
        at = ("scheduler", "mutations", path)
        reason = _pbt_reshapes(path, primitive)
        if reason:
            found.append(At(at, reason))
        for searched, domain in space.items():
            overlaps = path == searched or path.startswith(searched + ".") or searched.startswith(path + ".")
            if overlaps and isinstance(domain, Grid):
                found.append(At(at, (
                    f"a grid at {searched} and mutated here: PBT replaces a trial's grid value at its "
                    "first exploit, so the grid's comparison would not hold; grid it or mutate it, not "
                    "both (a mutated value may start sampled: {uniform: [lo, hi]} or {choice: [...]})"
                ), related=tuple(searched.split("."))))
    return found


def _pbt_reshapes(path: str, primitive: BaseModel) -> str | None:
    """Why mutating ``path`` would break an exploit, or None when it is safe."""
    why = "a PBT exploit copies the donor's weights and optimizer state into the trial, so these must match"
    instead = "search it with {grid: [...]} or {choice: [...]} instead (an exploit then copies the donor's value with its weights)"
    parts = path.split(".")
    if parts[0] == "model":
        field = parts[1] if len(parts) == 2 else None
        if field in _DROPOUT_FIELDS:
            values = primitive_values(primitive)
            values = values if isinstance(primitive, Choice) else values[:2]
            numbers = [v for v in values if isinstance(v, (int, float))]  # others: the type check's
            if numbers and min(numbers) <= 0:
                return (f"{path} can be 0 here, and a dropout of 0 builds the model without its Dropout "
                        f"layers, renumbering the layers after them; {why}: mutate it within a range "
                        "above 0, e.g. {uniform: [0.05, 0.5]}")
            return None
        if field in PBT_MUTABLE_MODEL_FIELDS:
            return None
        mutable = ", ".join("model." + f for f in PBT_MUTABLE_MODEL_FIELDS)
        return (f"{path} changes the model's parameters (shapes, layers or which of them train); {why}: "
                f"{instead}. PBT may mutate {mutable} (and training hyperparameters)")
    if path in _PBT_FIXED:
        return f"{path} {_PBT_FIXED[path]}; {why}: {instead}"
    return None


# ----------------------------------------------------------------------------- trial budget
# Trials a spec may plan unless the caller raises it (sweepctl validate/run/resume --max-trials N;
# the API gets this default through service/core/loading.py's parse_spec): a grid typed one
# factor too wide must fail at once, not queue millions of trials.
MAX_TRIALS = 10_000


def trial_count_problem(spec: SweepSpec, max_trials: int = MAX_TRIALS) -> At | None:
    """The trial count over ``max_trials``, naming the factors (grid sizes, num_samples); computed
    as a product, the grid is never enumerated. At the largest factor's path."""
    total = num_trials(spec)
    if total <= max_trials:
        return None
    factors = list(_grid_sizes(spec).items())
    factors.append(("search.num_samples", spec.search.num_samples))
    shown = " × ".join(f"{path} {n:,}" for path, n in factors if n > 1)
    largest = max(factors, key=lambda f: f[1])[0]
    return At(tuple(largest.split(".")), (
        f"{shown} = {total:,} trials > {max_trials:,}, the cap: shrink the grid (or search.num_samples), "
        f"or raise the cap with --max-trials {total}"
    ), involves=tuple(_at(path) for path, _ in factors))


# ----------------------------------------------------------------------------- helpers
_FULLY_CHECKED = 3  # values per mutation validated inside a whole spec; the rest by the leaf's type


def _mutation_value_problems(spec: SweepSpec) -> list[At]:
    """Each PBT mutation must name a real spec leaf and its values must fit that leaf's type, one
    problem per mutation at scheduler.mutations.PATH: the first values (a range's bounds) are put
    into a copy of the spec and validated; the rest of a choice list by the leaf's type alone (one
    validation for the whole list, so a long list costs milliseconds, not a spec per value)."""
    found, base = [], None
    # A section searched as a grid/choice over whole sections: a mutation inside it is checked in
    # one member of each class it lists (model: mlp, cnn, ...), put in the section's place.
    listed = {path: p for path, p in search_space(spec).items() if path in CONDITIONAL_SECTIONS
              and isinstance(p, (Grid, Choice)) and any(isinstance(m, BaseModel) for m in primitive_values(p))}
    conditional = conditional_sections(spec)
    for path, primitive in spec.scheduler.mutations.items():
        if base is None:
            base = spec.model_dump(mode="json", exclude={"scheduler"})
        section = next((s for s in listed if path.startswith(s + ".")), None)
        if section in conditional:
            continue  # PBT refuses a conditional space (_pbt_problems)
        bases = [base]
        if section is not None:
            members = {type(m): m for m in reversed(primitive_values(listed[section]))}.values()
            bases = [_put(base, section, m.model_dump(mode="json")) for m in members]
        problem = next((p for b in bases if (p := _mutation_value_problem(b, path, primitive))), None)
        if problem:
            found.append(At(("scheduler", "mutations", path), problem, involves=(_at(path),)))
    return found


def _mutation_value_problem(base: dict, path: str, primitive: BaseModel) -> str | None:
    values = primitive_values(primitive)
    candidates = _distinct(values if isinstance(primitive, Choice) else values[:2])
    for value in candidates[:_FULLY_CHECKED]:
        try:
            trial = SweepSpec.model_validate(_put(base, path, value))
        except ValidationError as err:
            # the spec's own cross-section problems are reported at their keys, not here
            errors = [e for e in err.errors() if e["loc"] or not isinstance(e.get("ctx", {}).get("error"), SpecProblems)]
            if errors:
                return f"{path}={short_repr(value)}: " + "; ".join(e["msg"] for e in errors[:3])
            continue
        if _lookup(trial.model_dump(mode="json"), path) is None:
            return f"{path}: not a value in this spec"
    rest = candidates[_FULLY_CHECKED:]
    adapter = _leaf_adapter(base, path) if rest else None
    if adapter is not None:
        try:
            adapter.validate_python(rest)
        except ValidationError as err:
            first = err.errors()[0]
            value = rest[first["loc"][0]] if first["loc"] and isinstance(first["loc"][0], int) else "?"
            return f"{path}={short_repr(value)}: {first['msg']}"
    return None


def _distinct(values: list) -> list:
    seen, out = set(), []
    for value in values:
        key = (type(value).__name__, repr(value))
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def _put(data: dict, dotted: str, value: Any) -> dict:
    """``apply_overrides(data, {dotted: value})`` copying only the dicts along the path."""
    *parents, leaf = dotted.split(".")
    result = dict(data)
    node = result
    for key in parents:
        child = node.get(key)
        child = dict(child) if isinstance(child, dict) else {}
        node[key] = child
        node = child
    node[leaf] = value
    return result


_PRIMITIVE_CLASSES = (Grid, Choice, Uniform, LogUniform, RandInt, QUniform)


def _leaf_adapter(data: dict, dotted: str) -> TypeAdapter | None:
    """A validator for a list of values of the spec field at ``dotted`` (None if not one)."""
    cls, node = SweepSpec, data
    *parents, leaf = dotted.split(".")
    for key in parents:
        field = cls.model_fields.get(key)
        if field is None:
            return None
        node = node.get(key) if isinstance(node, dict) else None
        cls = _section_class(field.annotation, node)
        if cls is None:
            return None
    return _field_list_adapter(cls, leaf) if leaf in cls.model_fields else None


@functools.lru_cache(maxsize=256)
def _field_list_adapter(cls: type[BaseModel], name: str) -> TypeAdapter:
    field = cls.model_fields[name]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(list[annotation])


def _section_class(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The spec class a field holds, picking a union member by the node's ``name``."""
    classes = [c for c in _classes_in(annotation) if not issubclass(c, _PRIMITIVE_CLASSES)]
    if len(classes) == 1:
        return classes[0]
    name = node.get("name") if isinstance(node, dict) else None
    for c in classes:
        literal = c.model_fields.get("name")
        if literal is not None and name in typing.get_args(literal.annotation):
            return c
    return None


def _classes_in(annotation: Any) -> list[type]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _classes_in(arg)
    return found


def _lookup(data: dict, path: str) -> Any:
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def max_epochs(spec: SweepSpec) -> int:
    """The most epochs any trial can run (train.epochs may itself be searched)."""
    epochs = spec.train.epochs
    if isinstance(epochs, int):
        return epochs
    values = primitive_values(epochs)
    if isinstance(epochs, (Grid, Choice)):
        return max(values)
    return int(values[1])  # the upper bound of a range


def search_space(spec: BaseModel, prefix: str = "") -> dict[str, BaseModel]:
    """Every primitive in the spec, keyed by dotted path, in field order."""
    found: dict[str, BaseModel] = {}
    for field in type(spec).model_fields:
        value = getattr(spec, field)
        path = f"{prefix}{field}"
        if _primitive_tag(value) != "value":
            found[path] = value
        elif isinstance(value, BaseModel):
            found.update(search_space(value, path + "."))
    return found


def primitive_values(primitive: BaseModel) -> Any:
    """The primitive's argument: the list for grid/choice, the bounds for ranges."""
    (field,) = type(primitive).model_fields
    return getattr(primitive, field)


def num_trials(spec: SweepSpec) -> int:
    """Grid points × num_samples (Ray Tune's rule: every sample is crossed with every grid point)."""
    return math.prod(_grid_sizes(spec).values()) * spec.search.num_samples


def _grid_sizes(spec: SweepSpec) -> dict[str, int]:
    """The points of each grid, by path: a grid's values; a grid over the branches of a conditional
    section, the sum over its branches of each branch's own grid points (the product of its grids)."""
    sections = conditional_sections(spec)
    sizes = {}
    for path, primitive in search_space(spec).items():
        if isinstance(primitive, Grid) and path in sections:
            sizes[path] = sum(math.prod(len(p.grid) for p in branch.space.values() if isinstance(p, Grid))
                              for branch in sections[path])
        elif isinstance(primitive, Grid):
            sizes[path] = len(primitive.grid)
    return sizes


# ----------------------------------------------------------------------------- conditional spaces
# A grid or choice over whole sections whose branches hold search primitives of their own:
#
#     train:
#       optimizer: {choice: [{name: sgd, lr: {loguniform: [1e-3, 1e-1]}, momentum: {uniform: [0.8, 0.99]}},
#                            {name: adam, lr: {loguniform: [1e-4, 1e-2]}}]}
#
# Each trial has one branch and samples only that branch's primitives. Its config (Tune's, the
# record's) is flat, by the section's dotted paths: everything the branch sets, plain or sampled,
# and always its name: {"train.optimizer.name": "sgd", "train.optimizer.lr": 0.012,
# "train.optimizer.momentum": 0.83} for an SGD trial, no momentum for an Adam one. A searcher names
# a branch's primitive by where it is written (train.optimizer.choice[0].lr): TPE models SGD's lr
# and Adam's lr apart (trainer/driver/conditional.py translates). A grid or choice over sections
# that hold no primitive is not conditional: its config holds the whole section as one value.
CONDITIONAL_SECTIONS = ("model", "train.optimizer")


@dataclass(frozen=True)
class Branch:
    """One member of a grid/choice over a whole section."""

    section: str  # the section's dotted path: "train.optimizer"
    kind: str  # "grid" or "choice"
    index: int  # its position in the list
    fixed: dict[str, Any]  # what it sets to plain values, name always, by config key: {"train.optimizer.name": "sgd"}
    space: dict[str, BaseModel]  # its primitives by config key: {"train.optimizer.lr": LogUniform(...)}

    @property
    def where(self) -> str:
        """As written, the loader's dotted form: train.optimizer.choice[0]."""
        return f"{self.section}.{self.kind}[{self.index}]"

    def name_of(self, key: str) -> str:
        """A config key as a searcher's parameter name: train.optimizer.lr → train.optimizer.choice[0].lr."""
        return f"{self.where}.{key.removeprefix(self.section + '.')}"

    def field_at(self, key: str) -> tuple:
        """A config key's place in the spec: ("train", "optimizer", "choice", 0, "lr")."""
        return (*_at(self.section), self.kind, self.index, key.removeprefix(self.section + "."))


def conditional_sections(spec: SweepSpec) -> dict[str, list[Branch]]:
    """The sections searched as a grid/choice over branches of which at least one holds a primitive."""
    found = {}
    for path, primitive in search_space(spec).items():
        if path not in CONDITIONAL_SECTIONS or not isinstance(primitive, (Grid, Choice)):
            continue
        members = primitive_values(primitive)
        if not any(isinstance(m, BaseModel) and search_space(m) for m in members):
            continue
        kind = "grid" if isinstance(primitive, Grid) else "choice"
        found[path] = [_branch(path, kind, i, m) for i, m in enumerate(members)]
    return found


def _branch(section: str, kind: str, index: int, member: BaseModel) -> Branch:
    space = {f"{section}.{key}": p for key, p in search_space(member).items()}
    written = member.model_dump(mode="json", exclude_unset=True)
    fixed = {} if f"{section}.name" in space else {f"{section}.name": member.name}  # its default, when unset
    fixed.update({f"{section}.{key}": value for key, value in written.items() if f"{section}.{key}" not in space})
    return Branch(section, kind, index, fixed, space)


def branches(spec: SweepSpec) -> list[Branch]:
    """Every branch of every conditional section."""
    return [b for section in conditional_sections(spec).values() for b in section]


def config_keys(spec: SweepSpec) -> list[str]:
    """Every key a trial's config may hold (before PBT mutations), in the spec's order: each
    primitive's path; for a conditional section, the keys of every one of its branches."""
    sections = conditional_sections(spec)
    keys: dict[str, None] = {}
    for path in search_space(spec):
        for key in [k for b in sections[path] for k in [*b.fixed, *b.space]] if path in sections else [path]:
            keys.setdefault(key)
    return list(keys)


def _grids_in_drawn_branches(spec: SweepSpec) -> list[At]:
    """A random search draws one branch of a {choice: [...]} per trial: a grid inside a branch has
    no fixed set of trials to walk (a {grid: [...]} over the branches crosses each with its grids)."""
    found = []
    for b in branches(spec):
        for key, primitive in b.space.items():
            if b.kind == "choice" and isinstance(primitive, Grid):
                found.append(At(b.field_at(key), (
                    f"a grid inside a branch of {b.section}'s {{choice: [...]}}: each trial draws one branch, "
                    f"so its grid has no fixed set of points to walk; write {{choice: [...]}} here, or make "
                    f"{b.section} a {{grid: [...]}} over its branches (each branch crossed with its own grids)"
                )))
    return found


def apply_overrides(spec_dict: dict, flat: dict[str, Any]) -> dict:
    """Return a copy of a spec dict with dotted-path values set (trial configs, --set)."""
    import copy

    result = copy.deepcopy(spec_dict)
    for path, value in flat.items():
        node = result
        *parents, leaf = path.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = value
    return result


def concrete(spec: SweepSpec, trial_config: dict[str, Any]) -> SweepSpec:
    """The spec with one trial's sampled values in place of its primitives (a conditional section:
    built from the trial's branch keys alone, see conditional_sections)."""
    sections = conditional_sections(spec)
    needed = {f"{path}.name" if path in sections else path for path in search_space(spec)}
    missing = needed - set(trial_config)
    if missing:
        raise ValueError(f"trial config lacks values for {sorted(missing)}")
    merged = spec.model_dump(mode="json")
    for path in sections:
        merged = _put(merged, path, {})  # the branch's keys fill it; defaults stand in for the rest
    merged = apply_overrides(merged, trial_config)
    return SweepSpec.model_validate(merged)

