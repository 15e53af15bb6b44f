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
import torchvision
from torch import Tensor, nn

from service.spec import CNNSpec, MLPSpec, ResNetSpec, search_space

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
    spec: MLPSpec | CNNSpec | ResNetSpec, input_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    """A new model for images of ``input_shape`` = (C, H, W) that outputs ``num_classes`` logits."""
    unresolved = sorted(search_space(spec))
    if unresolved:
        raise ValueError(
            f"model spec still has search primitives at {unresolved}: build_model needs a "
            "concrete spec (substitute the trial's values first)"
        )
    builders = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}
    if spec.name not in builders:
        raise ValueError(f"unknown model {spec.name!r}; expected one of {sorted(builders)}")
    return builders[spec.name](spec, tuple(input_shape), num_classes)


# ----------------------------------------------------------------------------- MLP
def _mlp(spec: MLPSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Flatten -> per hidden width: Linear -> [BatchNorm1d] -> activation -> [Dropout] -> Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in spec.hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        if spec.batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(activation(spec.activation))
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- CNN
class ConvBlock(nn.Module):
    """Conv -> [BatchNorm2d] -> (+ input, if residual) -> activation -> [MaxPool2d(2)].

    The residual skip adds the block's input to the (normalized) convolution output before the
    activation, as in a ResNet basic block; it needs equal channels and 'same' padding.
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

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm(self.conv(x))
        if self.residual:
            out = out + x
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


# ----------------------------------------------------------------------------- ResNet
_RESNETS = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
}


def _resnet(spec: ResNetSpec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18/34/50, randomly initialised (no weight download).

    ``cifar_stem`` swaps the ImageNet stem (7x7 stride-2 conv + max-pool, a 4x downsampling meant
    for 224px images) for a 3x3 stride-1 conv without pooling, the usual choice for 32x32 inputs.
    The first conv is also replaced whenever the input does not have 3 channels.
    """
    model = _RESNETS[spec.depth](weights=None, num_classes=num_classes)
    channels = input_shape[0]
    if spec.cifar_stem:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        return model
    # A replaced stem gets the initialisation torchvision gives the convolutions it builds.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
