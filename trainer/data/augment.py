"""Per-batch training augmentations (``augment_batch``), vectorized over the batch.

Every random draw comes from a caller-owned ``torch.Generator``, never torch's global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def augment_batch(
    x: Tensor,
    augmentations: list,
    generator: torch.Generator,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Tensor:
    """Apply ``augmentations`` (spec objects, in list order) to a normalized batch ``x`` (B, C, H, W).

    Each image gets its own random draw, all from ``generator`` (same generator state, same
    output). Returns a new tensor; ``x`` is never modified. ``mean``/``std`` are the dataset's
    per-channel normalization (``SplitData.mean``/``.std``, raw pixel scale); only ``color_jitter``
    needs them, to work on raw pixel values.
    """
    if not augmentations:
        return x.clone()
    out = x  # each step below builds a new tensor, so x itself is never written to
    for aug in augmentations:
        name = getattr(aug, "name", None)
        if name == "hflip":
            out = _flip(out, aug.p, -1, generator)
        elif name == "vflip":
            out = _flip(out, aug.p, -2, generator)
        elif name == "random_crop":
            out = _random_crop(out, aug.padding, generator)
        elif name == "rotation":
            angle = _uniform(out, generator, -aug.degrees, aug.degrees)
            out = _affine(out, angle_deg=angle)
        elif name == "affine":
            b, _, h, w = out.shape
            u = torch.rand(4, b, generator=generator, device=generator.device).to(out.device, out.dtype)
            out = _affine(
                out,
                translate_px=((2 * u[0] - 1) * aug.translate * w, (2 * u[1] - 1) * aug.translate * h),
                scale=aug.scale[0] + u[2] * (aug.scale[1] - aug.scale[0]),
                shear_deg=(2 * u[3] - 1) * aug.shear,
            )
        elif name == "color_jitter":
            if mean is None or std is None:
                raise ValueError(
                    "color_jitter works on raw pixel values and needs the dataset's per-channel mean "
                    "and std: augment_batch(x, augmentations, generator, mean=data.mean, std=data.std)"
                )
            out = _color_jitter(out, aug, generator, mean, std)
        else:
            raise ValueError(
                f"unknown augmentation {aug!r}; expected hflip, vflip, random_crop, rotation, affine "
                "or color_jitter"
            )
    return out


def _uniform(x: Tensor, generator: torch.Generator, lo: float, hi: float) -> Tensor:
    """One draw per image, uniform in [lo, hi), on x's device and dtype."""
    u = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device, x.dtype)
    return lo + u * (hi - lo)


def _flip(x: Tensor, p: float, dim: int, generator: torch.Generator) -> Tensor:
    """Mirror each image along ``dim`` (-1: left-right, -2: upside down) with probability ``p``."""
    draw = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device)
    flip = (draw < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(dim), x)


def _random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each side by ``padding`` pixels, then cut a random H x W window per image.

    The batch is already normalized, so the zero padding is the training mean colour rather than
    black; for the purpose of this augmentation (small translations) that makes no difference.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    # Top-left corner of each image's window, in [0, 2 * padding] (inclusive).
    dy, dx = torch.randint(
        0, 2 * padding + 1, (2, b), generator=generator, device=generator.device
    ).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H) padded row of each output row
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    # Advanced indexing broadcasts the four index tensors to (B, C, H, W).
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def _affine(
    x: Tensor,
    *,
    angle_deg: Tensor | float = 0.0,
    translate_px: tuple[Tensor | float, Tensor | float] = (0.0, 0.0),
    scale: Tensor | float = 1.0,
    shear_deg: Tensor | float = 0.0,
) -> Tensor:
    """Warp every image by its own affine map about the image centre, in one grid_sample call.

    Per image (each argument a scalar or a (B,) tensor): scale by ``scale``, shear along x by
    ``shear_deg``, rotate counter-clockwise (as displayed: y points down) by ``angle_deg``, then
    shift by ``translate_px`` = (right, down) pixels. Bilinear interpolation; pixels that come from
    outside the image are 0, which on normalized data is the training mean colour, not black.
    """
    b, _, h, w = x.shape
    as_batch = lambda v: torch.as_tensor(v, dtype=x.dtype, device=x.device).expand(b)  # noqa: E731
    angle, shear = torch.deg2rad(as_batch(angle_deg)), torch.deg2rad(as_batch(shear_deg))  # radians
    s, tx, ty = as_batch(scale), as_batch(translate_px[0]), as_batch(translate_px[1])

    # grid_sample wants, for every OUTPUT pixel, where to read in the INPUT: the inverse map
    # p_in = A^-1 (p_out - t), with A = rotate @ shear @ scale in pixel units (origin at the centre):
    #   rotate^-1 = [[cos, -sin], [sin, cos]],  shear^-1 = [[1, -tan], [0, 1]],  scale^-1 = 1/s.
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    a00, a01 = (cos - tan * sin) / s, (-sin - tan * cos) / s
    a10, a11 = sin / s, cos / s
    # affine_grid works in normalized coordinates: x_px = x_norm * W/2, y_px = y_norm * H/2
    # (align_corners=False). Converting A^-1 keeps angles right on non-square images.
    l00, l01, l10, l11 = a00, a01 * (h / w), a10 * (w / h), a11
    tnx, tny = tx / (w / 2), ty / (h / 2)  # the shift in normalized units
    theta = torch.stack(
        [
            torch.stack([l00, l01, -(l00 * tnx + l01 * tny)], dim=1),
            torch.stack([l10, l11, -(l10 * tnx + l11 * tny)], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ITU-R 601 luma weights (as torchvision's rgb_to_grayscale) for R, G, B.
_LUMA = (0.299, 0.587, 0.114)


def _color_jitter(x: Tensor, aug, generator: torch.Generator, mean, std) -> Tensor:
    """Per-image brightness, contrast, saturation factors uniform in [1 - x, 1 + x], in that order.

    Colour operations only mean something on raw pixel values, so the batch is un-normalized
    with the dataset's ``mean``/``std``, jittered, and normalized again. As in torchvision:
    brightness scales the pixels, contrast blends each image with its mean grey level, saturation
    blends it with its own greyscale version (3-channel images only; a no-op otherwise). Unlike
    torchvision, results are not clipped to [0, 1]: we do not know the raw range of every dataset
    (synthetic data is unbounded), and a slightly out-of-range input is harmless to the model.
    """
    b, c = x.shape[:2]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"color_jitter: mean/std have {len(mean)}/{len(std)} entries for {c} channels")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    sd = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    spread = torch.tensor([aug.brightness, aug.contrast, aug.saturation], dtype=x.dtype, device=x.device)
    u = torch.rand(3, b, generator=generator, device=generator.device).to(x.device, x.dtype)
    brightness, contrast, saturation = (1 + (2 * u - 1) * spread[:, None]).view(3, b, 1, 1, 1)

    raw = x * sd + m  # back to raw pixel values
    raw = raw * brightness
    grey_level = _grey(raw).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    raw = grey_level + contrast * (raw - grey_level)
    if c == 3:
        grey = _grey(raw)  # (B, 1, H, W)
        raw = grey + saturation * (raw - grey)
    return (raw - m) / sd


def _grey(raw: Tensor) -> Tensor:
    """(B, 1, H, W) grey level: luma for RGB, the channel mean otherwise."""
    if raw.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=raw.dtype, device=raw.device).view(1, 3, 1, 1)
        return (raw * weights).sum(dim=1, keepdim=True)
    return raw.mean(dim=1, keepdim=True)
