"""Model families a sweep can search over: a plain MLP, the seed study's configurable CNN, ResNets.

``build_model`` turns one concrete model spec (every search primitive already replaced by a trial's
value) into a freshly initialised ``nn.Module`` for a given input shape and number of classes.
Initialisation draws from torch's global RNG, which the training loop seeds per trial.
Impossible configurations (e.g. 'valid' convolutions that shrink an 8x8 image to nothing) raise
``ValueError`` naming the knobs, so a failed trial says why instead of failing with a shape error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from service.core.spec import CIFAR10NetSpec, CNNSpec, MLPSpec, ResNetSpec, SmallResNetSpec, search_space

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """A new activation module by its spec name (relu, leaky_relu, elu, silu, gelu, sigmoid, tanh)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def build_model(
    spec: MLPSpec | CNNSpec | CIFAR10NetSpec | SmallResNetSpec | ResNetSpec,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    transfer_weights: bool = True,
) -> nn.Module:
    """A new model for images of ``input_shape`` = (C, H, W) that outputs ``num_classes`` logits.

    ``transfer_weights=False`` builds the same architecture without fetching what a ResNet spec
    transfers from (``pretrained: imagenet``, ``weights_uri``): for loading a checkpoint, which
    holds every weight itself, so loading never touches the network or the weights file."""
    unresolved = sorted(search_space(spec))
    if unresolved:
        raise ValueError(
            f"model spec still has search primitives at {unresolved}: build_model needs a "
            "concrete spec (substitute the trial's values first)"
        )
    builders = {
        "mlp": _mlp,
        "cnn": _cnn,
        "cifar10net": _cifar10net,
        "small_resnet": _small_resnet,
        "resnet": _resnet,
    }
    if spec.name not in builders:
        raise ValueError(f"unknown model {spec.name!r}; expected one of {sorted(builders)}")
    if spec.name == "resnet":  # the one family that starts from weights outside the checkpoint
        return _resnet(spec, tuple(input_shape), num_classes, transfer_weights=transfer_weights)
    return builders[spec.name](spec, tuple(input_shape), num_classes)


def count_trainable(model: nn.Module) -> int:
    """The model's trainable parameters (what the optimizer updates; a frozen backbone's are not
    counted): the record's ``params``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_parameters(spec, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """``count_trainable`` of the model ``build_model`` would build, without building it in memory:
    on the meta device (shapes only, nothing allocated or initialised) and without fetching what a
    ResNet transfers from (the weights decide no shape). For checking a constraint before training."""
    with torch.device("meta"):
        return count_trainable(build_model(spec, input_shape, num_classes, transfer_weights=False))


def preferred_memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last for models with convolutions (oneDNN and cuDNN run them fastest that way),
    contiguous for the rest (an MLP flattens its input: channels-last would only add a copy)."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if has_conv else torch.contiguous_format


# ----------------------------------------------------------------------------- MLP
def mlp_widths(spec: MLPSpec, input_size: int, num_classes: int) -> list[int]:
    """Hidden widths: the explicit list, or a halve/quarter schedule from the input size down."""
    if spec.width_schedule is None:
        return list(spec.hidden_sizes or [256, 128])
    divisor = 2 if spec.width_schedule == "halve" else 4
    widths, width = [], input_size // divisor
    while width > num_classes and len(widths) < spec.num_layers:
        widths.append(width)
        width //= divisor
    if not widths:
        raise ValueError(
            f"width_schedule {spec.width_schedule!r} leaves no hidden layer between {input_size} inputs "
            f"and {num_classes} classes: use hidden_sizes"
        )
    return widths


class MLPBlock(nn.Module):
    """Linear -> [BatchNorm1d] -> activation -> [Dropout], optionally with a skip connection
    (identity when the width is unchanged, a linear projection when it changes)."""

    def __init__(self, width_in: int, width_out: int, spec: MLPSpec):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(width_in, width_out)]
        if spec.batchnorm:
            layers.append(nn.BatchNorm1d(width_out))
        layers.append(activation(spec.activation))
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        self.body = nn.Sequential(*layers)
        self.skip = None
        if spec.residual:
            self.skip = nn.Identity() if width_in == width_out else nn.Linear(width_in, width_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out + self.skip(x) if self.skip is not None else out


def _mlp(spec: MLPSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Flatten -> one MLPBlock per hidden width -> Linear(num_classes)."""
    width = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for hidden in mlp_widths(spec, width, num_classes):
        layers.append(MLPBlock(width, hidden, spec))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- CNN
def pools_before_activation(act: nn.Module) -> bool:
    """Whether a conv block may max-pool first and apply ``act`` after, at no cost in exactness.

    ReLU commutes with max-pooling bit for bit, gradients included: max(relu(a), relu(b)) =
    relu(max(a, b)), and the gradient reaches the same pixel either way (where it differs, ReLU's
    gradient is 0). Pooling first runs the activation on a quarter of the pixels: seed 000's CNN
    trained 1.7x (fp32) to 2.2x (bf16) faster on CPU. Other activations keep their order (GELU and
    SiLU are not monotonic; saturating ones could route gradients to another pixel of a tie).
    """
    return type(act) is nn.ReLU


class ConvBlock(nn.Module):
    """Conv -> [BatchNorm2d] -> (+ input, if residual) -> activation -> [MaxPool2d(2)].

    The residual skip adds the block's input to the (normalized) convolution output before the
    activation, as in a ResNet basic block; it needs equal channels and 'same' padding.
    (With ReLU the pooling runs before the activation: the same numbers, faster.)
    """

    def __init__(
        self,
        in_channels: int,
        spec: CNNSpec,
        *,
        residual: bool,
        pool: bool,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            spec.filters,
            spec.kernel_size,
            padding="same" if spec.padding == "same" else 0,
        )
        self.norm = nn.BatchNorm2d(spec.filters) if spec.batchnorm else nn.Identity()
        self.act = activation(spec.activation)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.residual = residual
        self.pool_first = pools_before_activation(self.act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm(self.conv(x))
        if self.residual:
            out = out + x
        if self.pool_first:
            return self.act(self.pool(out))
        return self.pool(self.act(out))


def _cnn(spec: CNNSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``num_conv_layers`` conv blocks, then a fully connected head of ``num_fc_layers`` layers.

    Each block max-pools by 2 only while the feature map is at least 2x2, so deep stacks still fit
    small images (8x8 digits); 'valid' convolutions that would shrink the map below 1x1 are refused.
    """
    if spec.residual and spec.padding == "valid":
        raise ValueError(
            "model.residual=true needs model.padding='same': the identity skip adds the block's "
            "input to its output, so the convolution must keep the spatial size"
        )
    channels, height, width = input_shape
    blocks: list[nn.Module] = []
    for i in range(spec.num_conv_layers):
        if spec.padding == "valid":
            height, width = height - spec.kernel_size + 1, width - spec.kernel_size + 1
            if height < 1 or width < 1:
                raise ValueError(
                    f"model does not fit a {input_shape[1]}x{input_shape[2]} input: with "
                    f"padding='valid' and kernel_size={spec.kernel_size}, conv layer {i + 1} of "
                    f"num_conv_layers={spec.num_conv_layers} has nothing left to convolve; use "
                    "padding='same', a smaller kernel_size or fewer num_conv_layers"
                )
        pool = height >= 2 and width >= 2
        if pool:
            height, width = height // 2, width // 2
        # Layer 1 changes the channel count (input -> filters), so only layers 2..n get a skip.
        blocks.append(ConvBlock(channels, spec, residual=spec.residual and i > 0, pool=pool))
        channels = spec.filters
    features = nn.Sequential(*blocks)

    # The flattened size by a dummy forward: simpler and surer than repeating the arithmetic.
    # Eval mode so the dummy batch does not update BatchNorm running statistics.
    features.eval()
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).numel()
    features.train()

    head: list[nn.Module] = [nn.Flatten()]
    for _ in range(spec.num_fc_layers - 1):
        if spec.dropout > 0:
            head.append(nn.Dropout(spec.dropout))
        head += [nn.Linear(flat, spec.hidden_size), activation(spec.activation)]
        flat = spec.hidden_size
    head.append(nn.Linear(flat, num_classes))
    return nn.Sequential(features, *head)


# ----------------------------------------------------------------------------- CIFAR10Net
def _cifar10net(spec: CIFAR10NetSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Seed 001's network: (conv3x3 -> bn -> act -> maxpool2) per conv_channels entry, then
    fc1 -> bn -> act -> dropout -> fc2 -> bn -> act -> dropout -> classifier; Kaiming init.
    (With ReLU each block pools before the activation: the same numbers, faster.)"""
    channels, size = input_shape[0], input_shape[1]
    layers: list[nn.Module] = []
    for out_channels in spec.conv_channels:
        act = activation(spec.activation)
        pool = nn.MaxPool2d(2) if size >= 2 else nn.Identity()  # small inputs (8x8) must not vanish
        layers += [
            nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),  # bias is redundant before bn
            nn.BatchNorm2d(out_channels),
            *((pool, act) if pools_before_activation(act) else (act, pool)),
        ]
        channels, size = out_channels, size // 2 if size >= 2 else size
    layers.append(nn.Flatten())
    features = nn.Sequential(*layers)
    with torch.no_grad():
        flat = features.eval()(torch.zeros(1, *input_shape)).shape[1]
    features.train()
    head = []
    for width_in, width_out in ((flat, spec.fc1), (spec.fc1, spec.fc2)):
        head += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), activation(spec.activation)]
        if spec.dropout > 0:
            head.append(nn.Dropout(spec.dropout))
    model = nn.Sequential(features, *head, nn.Linear(spec.fc2, num_classes))
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


# ----------------------------------------------------------------------------- small ResNet
class ResidualBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity skip: act(bn(conv(act(bn(conv(x))))) + x)."""

    def __init__(self, channels: int, activation_name: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            activation(activation_name),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = activation(activation_name)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + x)


def _small_resnet(spec: SmallResNetSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Seed 002's residual CNN: stem (h_1) -> residual block -> stride-2 conv to h_2 -> residual
    block -> global average pool -> dropout -> linear."""

    def conv_bn(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            activation(spec.activation),
        ]

    return nn.Sequential(
        *conv_bn(input_shape[0], spec.h_1, stride=1),
        ResidualBlock(spec.h_1, spec.activation),
        *conv_bn(spec.h_1, spec.h_2, stride=2),
        ResidualBlock(spec.h_2, spec.activation),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity(),
        nn.Linear(spec.h_2, num_classes),
    )


# ----------------------------------------------------------------------------- ResNet
class ResNetClassifier(nn.Module):
    """[resize] -> torchvision ResNet backbone (its fc removed) -> head.

    ``frozen`` (transfer learning, head only): the backbone's parameters get no gradients and it
    stays in eval mode even while the model trains, so its BatchNorm statistics do not drift
    either; the backbone's weights after training are exactly the transferred ones.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, resize: int | None, gray: bool, frozen: bool):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.resize, self.gray, self.frozen = resize, gray, frozen
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.gray:  # 1-channel images through a 3-channel (e.g. ImageNet) stem
            x = x.expand(-1, 3, -1, -1)
        if self.resize:  # e.g. 32 -> 224 px: the resolution ImageNet features were learned at
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return self.head(self.backbone(x))


def _resnet(spec: ResNetSpec, input_shape: tuple[int, int, int], num_classes: int, *,
            transfer_weights: bool = True) -> nn.Module:
    """torchvision's ResNet-18/34/50: from scratch, or transferred from ImageNet weights
    (torchvision's weights API, needs network access) or a state_dict at ``weights_uri``.
    ``transfer_weights=False``: neither is fetched (the architecture is the same either way:
    the transferred weights decide nothing about the shapes, ``spec`` does).

    ``cifar_stem`` swaps the ImageNet stem (7x7 stride-2 conv + max-pool, a 4x downsampling meant
    for 224px images) for a 3x3 stride-1 conv without pooling, the usual choice for 32x32 inputs.
    """
    import torchvision.models  # here, not at the top: 1.7 s of every trial worker's start, for ResNets only

    builder = getattr(torchvision.models, f"resnet{spec.depth}")
    weights = None
    if spec.pretrained == "imagenet" and transfer_weights:
        weights = torchvision.models.get_model_weights(builder).IMAGENET1K_V1
    backbone = builder(weights=weights)  # downloads ImageNet weights into TORCH_HOME when asked
    transfer = spec.pretrained != "none" or spec.weights_uri is not None
    # Transferred stems expect RGB: grey images are repeated to 3 channels. From scratch, the
    # stem simply takes the data's channels.
    channels = 3 if transfer else input_shape[0]
    if spec.cifar_stem:
        backbone.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        backbone.maxpool = nn.Identity()
    elif channels != 3:
        backbone.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if backbone.conv1.in_channels != 3 or spec.cifar_stem:
        # A replaced stem gets the initialisation torchvision gives the convolutions it builds.
        nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
    features = backbone.fc.in_features  # 512 (18/34) or 2048 (50)
    backbone.fc = nn.Identity()
    if spec.weights_uri and transfer_weights:
        backbone.load_state_dict(load_backbone_weights(spec.weights_uri))
    return ResNetClassifier(
        backbone,
        _head(spec, features, num_classes),
        resize=spec.resize,
        gray=transfer and input_shape[0] == 1,
        frozen=spec.mode == "frozen",
    )


def _head(spec: ResNetSpec, features: int, num_classes: int) -> nn.Module:
    """linear: one Linear; mlp: [Dropout] -> Linear -> activation per head width, then Linear."""
    layers: list[nn.Module] = []
    width = features
    if spec.head == "mlp":
        for hidden in spec.head_widths:
            if spec.head_dropout > 0:
                layers.append(nn.Dropout(spec.head_dropout))
            layers += [nn.Linear(width, hidden), activation(spec.head_activation)]
            width = hidden
    if spec.head_dropout > 0:
        layers.append(nn.Dropout(spec.head_dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def load_backbone_weights(uri: str) -> dict[str, Tensor]:
    """A ResNet state_dict from a local path or s3:// URI, loaded with ``weights_only=True``:
    tensors only, never arbitrary pickled objects (which could run code). The classifier
    (``fc.*``) is dropped: the head is ours."""
    import pickle

    from service.core.fetch import fetch_to_cache

    path = fetch_to_cache(uri)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"model.weights_uri {uri}: not a plain state_dict of tensors, refused by the weights-only "
            f"loader ({str(err).splitlines()[0]}); save weights with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict") or state.get("model"), dict):
        state = state.get("state_dict") or state.get("model")  # common checkpoint wrappers
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"model.weights_uri {uri}: expected a state_dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "module.fc."))}
