"""Generator forward time per sample (both branches: backbones, hourglass filters) per preset,
with float32 weights and with the model cast to bfloat16 (`Generator.from_pretrained(dtype=)`,
`--dtype bfloat16`), the float32 figure the peer of the bfloat16 one."""

import pytest
import torch
from bench_settings import DEVICES, QUICK

from get3dhuman import Generator

PRESETS = ["tiny"] if QUICK else ["tiny", "small", "official"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_generator_features(benchmark, preset, device, dtype):
    torch.manual_seed(0)
    generator = Generator(preset).eval().to(device=device, dtype=dtype)
    z_shape, z_texture = (torch.randn(1, generator.config.z_dim, device=device, dtype=dtype) for _ in range(2))

    def features():
        with torch.no_grad():
            out = generator(z_shape, z_texture)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"generator features, batch 1, {preset}, {device}"
    benchmark.extra_info["parameters"] = sum(p.numel() for p in generator.parameters())
    benchmark.pedantic(features, rounds=3, iterations=1, warmup_rounds=1)
