"""Small input checks and broadcasting shared by the reference modules (not graded)."""
from __future__ import annotations

import torch


def check_tensor(x, name: str, ndim: int | None = None, floating: bool = False) -> None:
    """Raise a clear error unless ``x`` is a tensor (of ``ndim`` dims, floating when asked)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_schedule(s, name: str) -> int:
    """Check a 1-D floating schedule (beta, alpha_bar) and return its length T."""
    check_tensor(s, name, ndim=1, floating=True)
    if s.numel() == 0:
        raise ValueError(f"{name} must hold at least one step, got an empty tensor")
    return s.shape[0]


def check_times(t, batch_size: int, T: int | None = None, name: str = "t") -> None:
    """Check a batch of times: a ``torch.long`` tensor of shape ``(B,)`` with values in ``[0, T)``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.long tensor of shape ({batch_size},), "
                        f"got {type(t).__name__}")
    if t.dtype != torch.long:
        raise TypeError(f"{name} must have dtype torch.long (one integer time per example), got {t.dtype}")
    if t.shape != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},) (one time per example), "
                         f"got {tuple(t.shape)}")
    if T is not None and t.numel() > 0 and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"{name} must lie in [0, {T - 1}] (0-based steps), "
                         f"got values in [{int(t.min())}, {int(t.max())}]")


def check_step(t, T: int, name: str = "t") -> int:
    """Check a single integer step in ``[0, T)`` (a Python int or a 0-d integer tensor)."""
    if isinstance(t, torch.Tensor):
        if t.numel() != 1 or t.is_floating_point():
            raise TypeError(f"{name} must be an int, got a tensor of shape {tuple(t.shape)} and dtype {t.dtype}")
        t = int(t.item())
    if isinstance(t, bool) or not isinstance(t, int):
        raise TypeError(f"{name} must be an int, got {type(t).__name__}")
    if not 0 <= t < T:
        raise ValueError(f"{name} must lie in [0, {T - 1}], got {t}")
    return t


def per_example(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` coefficient to ``(B, 1, ..., 1)`` on ``like``'s device and dtype.

    For images this is ``coef[:, None, None, None]``; it works for inputs of any rank.
    """
    return coef.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def generator_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    """The device random numbers must be drawn on for ``generator`` (``default`` without one)."""
    return generator.device if generator is not None else default


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise with ``x``'s shape, dtype and device, drawn with ``generator``."""
    dev = generator_device(generator, x.device)
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
