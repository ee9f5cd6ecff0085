"""Half precision survives save/load: a materialised (or plain, or supernet) folder loads in the
dtype it was saved in, or in the ``torch_dtype`` asked for, as diffusers' ``from_pretrained``."""

from __future__ import annotations

import pytest
import torch

from search_spaces import ElasticUNet
from search_spaces.materialize import arch_of, load_materialized, save_materialized, stored_dtype


def _dtypes(model: torch.nn.Module) -> set:
    return {p.dtype for p in model.parameters()}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_materialised_half_model_loads_in_its_dtype(tiny_unet, tmp_path, dtype):
    net = ElasticUNet(tiny_unet)
    small = torch.nn.Module.to(net.materialize(net.space.smallest()), dtype)
    save_materialized(small, tmp_path)
    assert stored_dtype(tmp_path / "diffusion_pytorch_model.safetensors") == dtype
    again = load_materialized(tmp_path)
    assert _dtypes(again) == {dtype}
    assert _same_weights(small, again)
    assert arch_of(again) == net.space.smallest()
    x, t = torch.randn(1, 1, 16, 16, dtype=dtype), torch.tensor([3])
    with torch.no_grad():
        assert torch.equal(small.eval()(x, t).sample, again(x, t).sample)


def test_torch_dtype_overrides_the_stored_dtype(tiny_unet, tmp_path):
    net = ElasticUNet(tiny_unet)
    small = torch.nn.Module.to(net.materialize(net.space.smallest()), torch.bfloat16)
    save_materialized(small, tmp_path)
    as_fp32 = load_materialized(tmp_path, torch_dtype=torch.float32)
    assert _dtypes(as_fp32) == {torch.float32}
    assert _same_weights(torch.nn.Module.to(small, torch.float32), as_fp32)  # bf16 -> fp32 is exact


def test_fp32_model_still_loads_in_fp32(tiny_unet, tmp_path):
    net = ElasticUNet(tiny_unet)
    small = net.materialize(net.space.smallest())
    save_materialized(small, tmp_path)
    again = load_materialized(tmp_path)
    assert _dtypes(again) == {torch.float32} and _same_weights(small, again)


def test_plain_half_folder_loads_in_its_dtype(tiny_unet, tmp_path):
    torch.nn.Module.to(tiny_unet, torch.float16).save_pretrained(str(tmp_path), safe_serialization=True)
    assert _dtypes(load_materialized(tmp_path)) == {torch.float16}
    assert _dtypes(load_materialized(tmp_path, torch_dtype=torch.float32)) == {torch.float32}


def test_half_supernet_loads_in_its_dtype(tiny_unet, tmp_path):
    net = ElasticUNet(tiny_unet)
    torch.nn.Module.to(net, torch.bfloat16)
    net.save_pretrained(tmp_path)
    again = ElasticUNet.from_pretrained(tmp_path)
    assert _dtypes(again) == {torch.bfloat16}
    assert again.space.macs(again.space.full()) == net.space.macs(net.space.full())
    assert _dtypes(ElasticUNet.from_pretrained(tmp_path, torch_dtype=torch.float32)) == {torch.float32}
