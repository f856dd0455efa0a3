"""Where a model runs and in which precision: device and dtype choices, checked once, and the facts
that every method needs when a model's layers sit on several devices.

Devices: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. ``auto`` hands placement to accelerate's
``device_map="auto"``: a model too big for one GPU is spread over all visible GPUs (and the CPU),
one block of layers per device. Nothing in headmine assumes one device: a tensor that meets a
layer's activations is moved to that layer's device (:func:`module_device`), inputs go to the
embedding's device (:func:`input_device`), and reductions are accumulated in float32 whatever the
model's dtype.

Dtypes: ``float32`` (the default, and what every exactness test uses), ``bfloat16`` and
``float16``. Half precision on the CPU runs, slowly; it is meant for GPUs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headmine.core.errors import InputError, ModelLoadError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``dtype`` as a torch floating dtype (accepts ``float32``/``bfloat16``/``float16`` and their short names)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(f"dtype {dtype} is not supported", "use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}", "use float32, bfloat16 or float16")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class DeviceRequest:
    """A checked device choice: ``device`` for one device, or ``device_map="auto"`` for several."""

    spec: str  # as the user wrote it, normalised ("cpu", "cuda:0", "auto")
    device: torch.device | None  # None when accelerate places the layers

    @property
    def is_auto(self) -> bool:
        return self.device is None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """What ``from_pretrained`` needs: ``device_map`` for ``auto``; one device is applied by ``.to``."""
        return {"device_map": "auto"} if self.is_auto else {}


def device_spec(device: str | torch.device) -> str:
    """A device choice checked for its form only (``cpu``, ``auto``, ``cuda``, ``cuda:N``), normalised;
    what a plan file written for another machine can check. :func:`parse_device` also checks this one."""
    spec = str(device).strip().lower()
    if spec == "auto":
        return spec
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}", f"use {DEVICE_CHOICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device type {dev.type!r} is not supported", f"use {DEVICE_CHOICES}")
    return "cpu" if dev.type == "cpu" else str(dev)


def parse_device(device: str | torch.device) -> DeviceRequest:
    """Check a device choice against this machine; a CUDA device without CUDA is a clear error."""
    spec = device_spec(device)
    if spec == "auto":
        return DeviceRequest("auto", None)
    dev = torch.device(spec)
    if dev.type == "cpu":
        return DeviceRequest("cpu", dev)
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {spec!r} was asked for, but this machine has no usable CUDA GPU "
            f"(torch {torch.__version__} built {'with' if torch.backends.cuda.is_built() else 'without'} CUDA)",
            "use --device cpu, or install a CUDA build of torch on a machine with a GPU",
        )
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {spec!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)",
            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or auto to spread the model over all of them",
        )
    return DeviceRequest(f"cuda:{index}", torch.device("cuda", index))


def module_device(module: nn.Module) -> torch.device:
    """The device a module computes on: that of its first parameter or buffer (CPU for an empty module).

    Under accelerate's big-model dispatch a module whose weights are offloaded carries an execution
    device in its hook; that device wins, since it is where the module's inputs must be.
    """
    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution) if not isinstance(execution, int) else torch.device("cuda", execution)
    for param in module.parameters():
        return param.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


def placement_summary(model: nn.Module) -> dict[str, Any]:
    """For the provenance: the devices the model's parameters live on, with parameter counts, and
    accelerate's device map when one was used (``{"cuda:0": 1.2e8, ...}``, ``device_map`` or None)."""
    counts: Counter[str] = Counter()
    for p in model.parameters():
        counts[str(p.device)] += p.numel()
    device_map = getattr(model, "hf_device_map", None)
    return {"devices": dict(counts), "device_map": None if device_map is None else {k: str(v) for k, v in device_map.items()}}
