"""Where a model runs and in what precision: the device a config names, and whether bf16 autocast pays there.
Training (engine) and scoring make the same choice, so it lives once, here."""
from __future__ import annotations

import torch

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError


def resolve_device(config: Config) -> torch.device:
    """The device of `config.device` ("auto": CUDA when there is one); bad input when it is unusable here."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(config.device)
    except RuntimeError:  # torch's message lists every device type; ours names the option
        raise InputError(f"option device={config.device!r} is not auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"option device={config.device!r} but CUDA is not available")
    return device


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where oneDNN runs bf16 convs/matmuls faster than fp32.

    Elsewhere (e.g. AVX2-only) bf16 is emulated and several times slower, so "auto" keeps fp32 there.
    """
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def use_bf16(config: Config, device: torch.device) -> bool:
    """Whether to run under bf16 autocast: `config.precision`, and with "auto" wherever bf16 is native."""
    if config.precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return config.precision == "bf16"
