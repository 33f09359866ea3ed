"""Choosing the compute device: CUDA, Apple MPS or CPU."""

from __future__ import annotations

import torch

from napari_unet.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Devices this machine can use, best first (always ends with ``cpu``)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a usable :class:`torch.device`.

    Raises :class:`DeviceError` when the device is asked for but absent.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no CUDA GPU is available here; use --device cpu")
    if kind == "mps" and "mps" not in available_devices():
        raise DeviceError("Apple MPS was requested but is not available here; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"cannot use device {name!r}") from None
    if kind == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"{name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return device


def release_memory(device: torch.device) -> None:
    """Give cached accelerator memory back (after training or a batch job)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an accelerator (or host) out-of-memory error."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
