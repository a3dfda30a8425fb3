"""The course's U-Nets: a small U-Net with self-attention for 32x32 images (after Ho et al. 2020).

Architecture (width ``w = 16``; the time/label path adds ``d = 4w = 64`` dimensional conditioning)::

    t -> time_embedding(t, d) -> MLP (Linear, SiLU, Linear) -> cond (B, d)
    x (B, c_in, 32, 32) -> inc: 3x3 conv, residual DoubleConv -> (B, w, 32, 32)
      down1 -> (B, 2w, 16, 16)  + P1(cond)
      down2 -> (B, 4w, 8, 8)    + P2(cond), self-attention (8x8)
      down3 -> (B, 4w, 4, 4)    + P3(cond), self-attention (4x4)
      up1(., down2) -> (B, 2w, 8, 8)   + P4(cond), self-attention (8x8)
      up2(., down1) -> (B, w, 16, 16)  + P5(cond)
      up3(., inc)   -> (B, w, 32, 32)  + P6(cond)
      outc: 1x1 conv -> (B, c_out, 32, 32)

``P_k = (SiLU, Linear(d, C_k))`` is a learned projection of the conditioning vector to the ``C_k``
channels of level k, broadcast over height and width. This is how Ho et al. 2020 feed the time in
their released code: the sinusoidal encoding (the student's ``timestep_embedding`` from notebook 02,
or the reference one in instructor code) goes through a small MLP and every block adds its own
linear projection of the result. In the conditional model ``cond`` also holds a learned label
embedding.

Two changes from the course text's U-Net, both measured on our 2-core CPU: these learned
projections instead of the raw sinusoid of each level's width (23k parameters, no measurable time;
after about 800 steps of 128 images, 4 minutes with bf16 autocast, the validation loss was 0.031
against 0.034), and a first layer that lets the network see how large its input is (:class:`InConv`;
the course text's network gives the same output for ``x`` and ``3 * x``).

Parameters at ``w = 16`` with one input channel: ``UNet`` 835,761; ``ScoreNet`` (no conditioning)
812,881; ``UNetConditional`` 836,465 (plus the adaptive normalization's projections when used).

The models take the time embedding (and the adaptive normalization) as arguments, so this module
holds no graded function. Every normalization is a GroupNorm (never BatchNorm), so a model's output
for one example does not depend on the rest of the batch.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TimeEmbedding = Callable[[torch.Tensor, int], torch.Tensor]
IMAGE_SIZE = 32


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------
# Conditioning context: lets normalization layers deep inside nn.Sequential blocks read a
# per-example conditioning vector that the model's forward sets once.


class ConditioningContext:
    """Holds the conditioning vector ``cond`` (B, cond_dim) during one forward pass."""

    def __init__(self):
        self.cond: Optional[torch.Tensor] = None

    @contextmanager
    def use(self, cond: torch.Tensor):
        previous, self.cond = self.cond, cond
        try:
            yield
        finally:
            self.cond = previous


class ConditionedNorm(nn.Module):
    """Wraps a conditional normalization ``norm(h, cond)`` so it can sit in an ``nn.Sequential``.

    ``norm`` is an instance of the user's class (e.g. ``AdaptiveGroupNorm(num_channels, cond_dim)``);
    ``forward(h)`` calls ``norm(h, context.cond)`` with the vector the model put in ``context``.
    """

    def __init__(self, norm: nn.Module, context: ConditioningContext):
        super().__init__()
        self.norm = norm
        self.context = context  # a plain object shared by all wrappers of one model

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cond = self.context.cond
        if cond is None:
            raise RuntimeError("ConditionedNorm called outside a forward pass that sets the conditioning")
        out = self.norm(h, cond)
        if not isinstance(out, torch.Tensor) or out.shape != h.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{type(self.norm).__name__}(h, cond) must return a tensor shaped like h "
                             f"{tuple(h.shape)}, got {got}")
        return out


NormFactory = Callable[[int], nn.Module]


def _group_norm(num_channels: int) -> nn.Module:
    return nn.GroupNorm(1, num_channels)


# ----------------------------------------------------------------------------------------------
# Building blocks


class DoubleConv(nn.Module):
    """(3x3 conv -> GroupNorm -> GELU -> 3x3 conv -> GroupNorm), optionally residual with a final GELU.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W); residual needs in == out channels.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 residual: bool = False, norm: NormFactory = _group_norm):
        super().__init__()
        mid_channels = mid_channels or out_channels
        if residual and in_channels != out_channels:
            raise ValueError("a residual DoubleConv needs in_channels == out_channels")
        self.residual = residual
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            norm(mid_channels),
            nn.GELU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return F.gelu(x + self.double_conv(x))
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool, a residual DoubleConv, then a DoubleConv: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory = _group_norm):
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, in_channels, residual=True, norm=norm),
            DoubleConv(in_channels, out_channels, norm=norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear 2x upsampling, concatenation with the skip connection, two DoubleConvs.

    ``forward(x, skip)``: x (B, C_x, H, W), skip (B, C_skip, 2H, 2W) with C_x + C_skip = in_channels
    -> (B, out_channels, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory = _group_norm):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, in_channels, residual=True, norm=norm)
        self.conv2 = DoubleConv(in_channels, out_channels, in_channels // 2, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        x = torch.cat([skip, x], dim=1)  # (B, C_skip + C_x, 2H, 2W)
        return self.conv2(self.conv(x))


class SelfAttention(nn.Module):
    """Pre-LayerNorm multi-head self-attention over the pixels, then a residual feed-forward block.

    ``forward(x)``: x (B, C, S, S) -> (B, C, S, S); attention over the S*S positions with 4 heads.

    On the CPU the attention runs on PyTorch's plain "math" kernel: the fused (flash) kernel is slow to
    back-propagate through sequences this short (64 and 16 positions). Measured on a 2-core CPU with
    bf16 autocast, batch 64: 414 -> 525 training images/s for the whole U-Net, with the same result.
    """

    def __init__(self, channels: int, size: int, heads: int = 4):
        super().__init__()
        self.channels, self.size = channels, size
        self.ln = nn.LayerNorm(channels)
        self.mha = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.ff = nn.Sequential(
            nn.LayerNorm(channels),
            nn.Linear(channels, channels),
            nn.GELU(),
            nn.Linear(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        h = self.ln(seq)
        with sdpa_kernel([SDPBackend.MATH]) if x.device.type == "cpu" else nullcontext():
            seq = self.mha(h, h, h, need_weights=False)[0] + seq
        seq = self.ff(seq) + seq
        return seq.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)


class InConv(nn.Module):
    """A 3x3 convolution with bias and no normalization, then a residual DoubleConv.

    Shapes: (B, in_channels, 32, 32) -> (B, out_channels, 32, 32).

    The course text starts with a plain ``DoubleConv``: a bias-free convolution followed by
    ``GroupNorm(1, C)``, which divides out any positive factor of the input. That network computes
    exactly the same output for ``x`` and ``3 * x``: it cannot see how large its input is, although
    for a diffusion model the size of ``x_t`` is what tells signal from noise, and a sampler that
    drifts to too small or too large images is never pulled back. Deterministic DDIM sampling then
    ended in flat grey or noisy images (75% of them read as "not a digit" by the classifier of
    ``helpers.evaluation``). Here the residual connection carries the un-normalized convolution of
    the input forward, so the size of the input reaches the rest of the network. (Ho et al.'s U-Net
    also starts with a plain convolution.)
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory = _group_norm):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.block = DoubleConv(out_channels, out_channels, residual=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x))


class OutConv(nn.Module):
    """1x1 convolution to the output channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNetBackbone(nn.Module):
    """The U-Net body; ``forward(x, cond)`` adds a projection of ``cond`` (B, cond_dim) at each of six levels.

    With ``cond_dim=None`` (the score network of notebook 06) there is no conditioning input.
    """

    def __init__(self, c_in: int = 1, c_out: int = 1, width: int = 16, norm: NormFactory = _group_norm,
                 cond_dim: int | None = None):
        super().__init__()
        if width % 4 or width < 4:
            raise ValueError(f"width must be a positive multiple of 4 (4 attention heads), got {width}")
        w = width
        self.c_in, self.c_out, self.width, self.cond_dim = c_in, c_out, w, cond_dim
        self.inc = InConv(c_in, w, norm=norm)
        self.down1 = Down(w, 2 * w, norm=norm)
        self.down2 = Down(2 * w, 4 * w, norm=norm)
        self.down3 = Down(4 * w, 4 * w, norm=norm)
        self.up1 = Up(8 * w, 2 * w, norm=norm)
        self.up2 = Up(4 * w, w, norm=norm)
        self.up3 = Up(2 * w, w, norm=norm)
        self.outc = OutConv(w, c_out)
        self.sa1 = SelfAttention(4 * w, 8)
        self.sa2 = SelfAttention(4 * w, 4)
        self.sa3 = SelfAttention(2 * w, 8)
        if cond_dim is not None:  # one learned projection per level: cond (B, d) -> (B, C_level)
            self.cond_proj = nn.ModuleList(
                nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, c))
                for c in (2 * w, 4 * w, 4 * w, 2 * w, w, w))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is a float tensor (B, c_in, 32, 32)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (self.c_in, IMAGE_SIZE, IMAGE_SIZE):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (B, {self.c_in}, {IMAGE_SIZE}, {IMAGE_SIZE}), got {got}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point x, got {x.dtype}")

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (cond is None) != (self.cond_dim is None):
            raise ValueError("this backbone was built with cond_dim="
                             f"{self.cond_dim} but called with cond={'None' if cond is None else tuple(cond.shape)}")
        levels = iter(self.cond_proj) if cond is not None else None

        def add(h: torch.Tensor) -> torch.Tensor:
            if levels is None:
                return h
            return h + next(levels)(cond).to(h.dtype)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W

        x1 = self.inc(x)                       # (B, w, 32, 32)
        x2 = add(self.down1(x1))               # (B, 2w, 16, 16)
        x3 = self.sa1(add(self.down2(x2)))     # (B, 4w, 8, 8)
        x4 = self.sa2(add(self.down3(x3)))     # (B, 4w, 4, 4)
        h = self.sa3(add(self.up1(x4, x3)))    # (B, 2w, 8, 8)
        h = add(self.up2(h, x2))               # (B, w, 16, 16)
        h = add(self.up3(h, x1))               # (B, w, 32, 32)
        return self.outc(h)                    # (B, c_out, 32, 32)


def _check_t(t, batch: int, device: torch.device) -> torch.Tensor:
    """t as a (B,) tensor on ``device``: long (B,) or float (B,); a scalar is broadcast."""
    if not isinstance(t, torch.Tensor):
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = torch.tensor(t)
        else:
            raise ValueError(f"expected t as a tensor of shape ({batch},), got {type(t).__name__}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"expected t of shape ({batch},) (one time per example), got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"expected t of dtype long (or float), got {t.dtype}")
    if not t.is_floating_point():
        t = t.long()
    return t.to(device)


def _time_encoding(time_embedding: TimeEmbedding, t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``time_embedding(t, dim)`` (B, dim) with a shape check, in the model's dtype."""
    e = time_embedding(t, dim)
    if not isinstance(e, torch.Tensor) or tuple(e.shape) != (t.shape[0], dim):
        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"time_embedding(t, {dim}) must return shape ({t.shape[0]}, {dim}), got {got}")
    return e.to(dtype)


def _time_mlp(dim: int) -> nn.Module:
    """Sinusoidal encoding (B, dim) -> learned time vector (B, dim), as in Ho et al.'s code."""
    return nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))


class UNet(nn.Module):
    """Noise-prediction U-Net ``eps_theta(x_t, t)`` (Ho et al. 2020, section 4 and appendix B).

    Args:
        time_embedding: ``timestep_embedding(t, dim) -> (B, dim)``, the sinusoidal encoding of the
            (0-based) time index; called once per forward pass with ``dim = 4 * width``.
        c_in, c_out: image channels in and out; width: channels of the first level (16: 835,761 parameters).

    ``forward(x, t)``: x float (B, c_in, 32, 32), t long (B,) (float accepted, a scalar is broadcast)
    -> predicted noise (B, c_out, 32, 32). The encoding goes through ``time_mlp`` and a learned
    projection of the result is added at every level (see the module docstring).
    """

    def __init__(self, time_embedding: TimeEmbedding, c_in: int = 1, c_out: int = 1, width: int = 16):
        super().__init__()
        if not callable(time_embedding):
            raise TypeError("time_embedding must be a function (t, dim) -> (B, dim), "
                            f"got {type(time_embedding).__name__}")
        self.time_embedding = time_embedding
        self.width = width
        self.cond_dim = 4 * width
        self.time_mlp = _time_mlp(self.cond_dim)
        self.net = UNetBackbone(c_in, c_out, width, cond_dim=self.cond_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.net.check_input(x)
        t = _check_t(t, x.shape[0], x.device)
        cond = self.time_mlp(_time_encoding(self.time_embedding, t, self.cond_dim, x.dtype))  # (B, 4w)
        return self.net(x, cond)


class UNetConditional(nn.Module):
    """Class-conditional noise-prediction U-Net ``eps_theta(x_t, t, y)``.

    The condition vector is ``cond = time_mlp(time_embedding(t, cond_dim)) + label_embedding(y)``,
    shape ``(B, cond_dim)`` with ``cond_dim = 4 * width``; ``label_embedding`` has ``n_classes + 1``
    rows (row ``n_classes`` is the null label of classifier-free guidance). As the time alone in
    :class:`UNet`, a learned projection of ``cond`` is added at every level.

    With ``norm_layer`` (e.g. the student's ``AdaptiveGroupNorm``), every GroupNorm of the network
    becomes ``norm_layer(num_channels, cond_dim)``, called as ``norm(h, cond)`` with the same vector.

    ``forward(x, t, y)``: x (B, c_in, 32, 32), t long (B,), y long (B,) in {0, ..., n_classes}
    -> predicted noise (B, c_out, 32, 32).
    """

    def __init__(self, time_embedding: TimeEmbedding, n_classes: int = 10, norm_layer=None,
                 width: int = 16, c_in: int = 1, c_out: int = 1):
        super().__init__()
        if not callable(time_embedding):
            raise TypeError("time_embedding must be a function (t, dim) -> (B, dim), "
                            f"got {type(time_embedding).__name__}")
        self.time_embedding = time_embedding
        self.n_classes, self.width = n_classes, width
        self.null_label = n_classes
        self.cond_dim = 4 * width
        self.time_mlp = _time_mlp(self.cond_dim)
        self.label_embedding = nn.Embedding(n_classes + 1, self.cond_dim)
        self.context = ConditioningContext()
        self.adaptive = norm_layer is not None
        if self.adaptive:
            cond_dim, context = self.cond_dim, self.context

            def norm(num_channels: int) -> nn.Module:
                return ConditionedNorm(norm_layer(num_channels, cond_dim), context)
        else:
            norm = _group_norm
        self.net = UNetBackbone(c_in, c_out, width, norm=norm, cond_dim=self.cond_dim)

    def condition(self, t: torch.Tensor, y: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The condition vector ``cond`` (B, cond_dim) for checked ``t`` (B,) and ``y`` (B,)."""
        time = self.time_mlp(_time_encoding(self.time_embedding, t, self.cond_dim, dtype))  # (B, 4w)
        return time + self.label_embedding(y).to(time.dtype)  # (B, 4w)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.net.check_input(x)
        B = x.shape[0]
        t = _check_t(t, B, x.device)
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != B:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"expected labels y of shape ({B},), got {got}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"expected integer labels y (torch.long), got {y.dtype}")
        y = y.long().to(x.device)
        if B and (int(y.min()) < 0 or int(y.max()) > self.n_classes):
            raise ValueError(f"labels must lie in 0..{self.n_classes} ({self.n_classes} = null label), "
                             f"got values in {int(y.min())}..{int(y.max())}")
        cond = self.condition(t, y, x.dtype)  # (B, cond_dim)
        if not self.adaptive:
            return self.net(x, cond)
        with self.context.use(cond):
            return self.net(x, cond)


class ScoreNet(nn.Module):
    """The same U-Net without time input, for noise-conditional score matching (notebook 06).

    ``forward(x)``: x (B, c_in, 32, 32) -> (B, c_in, 32, 32). The score at noise level sigma is
    ``net(x) / sigma`` (Song & Ermon 2020, technique 3). GroupNorm only, never BatchNorm.
    """

    def __init__(self, width: int = 16, c_in: int = 1):
        super().__init__()
        self.width = width
        self.net = UNetBackbone(c_in, c_in, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net.check_input(x)
        return self.net(x)
