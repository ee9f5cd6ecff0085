"""Importance ordering of the elastic UNet's channels: the most important groups/heads first.

Permuting whole GroupNorm groups, heads or feed-forward units (rows of the producing layer,
columns of the consuming one) leaves the network's function unchanged, so a narrow
sub-network that keeps the first channels keeps the most important ones.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.unet_space import UNetSpace

__all__ = ["ff_in", "ff_out", "reorder_by_importance"]


def ff_out(ff: nn.Module) -> nn.Linear:
    """The output projection of a diffusers ``FeedForward`` (its last Linear)."""
    return [m for m in ff.net if isinstance(m, nn.Linear)][-1]


def ff_in(ff: nn.Module) -> nn.Linear:
    """The input projection of a diffusers ``FeedForward`` (inside its activation module)."""
    return ff.net[0].proj


def _is_gated(ff: nn.Module) -> bool:
    """GEGLU/SwiGLU projections emit 2x inner features (value and gate halves)."""
    return ff_in(ff).out_features == 2 * ff_out(ff).in_features


def _permute_rows(lin_or_conv: nn.Module, perm: torch.Tensor) -> None:
    lin_or_conv.weight.data = lin_or_conv.weight.data[perm].clone()
    if lin_or_conv.bias is not None:
        lin_or_conv.bias.data = lin_or_conv.bias.data[perm].clone()


def _permute_cols(lin_or_conv: nn.Module, perm: torch.Tensor) -> None:
    lin_or_conv.weight.data = lin_or_conv.weight.data[:, perm].clone()


def _group_perm(scores: torch.Tensor, unit: int) -> torch.Tensor:
    """Channel permutation that sorts whole units (groups/heads) by descending score."""
    n_units = scores.numel() // unit
    unit_scores = scores.view(n_units, unit).sum(1)  # (n_units,)
    order = torch.argsort(unit_scores, descending=True, stable=True)
    return (order[:, None] * unit + torch.arange(unit)[None, :]).reshape(-1)


@torch.no_grad()
def reorder_by_importance(unet: nn.Module, space: UNetSpace, method: str = "magnitude") -> None:
    """Permute elastic channels/heads so the most important come first (function unchanged).

    ``magnitude``: the L2 norm of every weight that reads or writes a channel, summed per
    GroupNorm group / head (torch-pruning's group magnitude importance with p=2, at group
    granularity so normalisation groups stay intact). ``none``: keep the pretrained order.
    """
    if method == "none":
        return
    if method != "magnitude":
        raise ValueError(f"unknown importance {method!r}; choose 'magnitude' or 'none'")
    for site in space.sites:
        m = unet.get_submodule(site.module)
        if site.kind == "width":
            C = site.full
            score = m.conv1.weight.pow(2).flatten(1).sum(1) + m.conv2.weight.pow(2).transpose(0, 1).flatten(1).sum(1)
            perm = _group_perm(score, site.unit)
            _permute_rows(m.conv1, perm)
            if m.time_emb_proj is not None:
                if m.time_emb_proj.out_features == 2 * C:  # scale_shift: both halves
                    _permute_rows(m.time_emb_proj, torch.cat([perm, perm + C]))
                else:
                    _permute_rows(m.time_emb_proj, perm)
            m.norm2.weight.data = m.norm2.weight.data[perm].clone()
            m.norm2.bias.data = m.norm2.bias.data[perm].clone()
            _permute_cols(m.conv2, perm)
        elif site.kind == "heads":
            inner = m.to_q.out_features
            d = inner // site.full
            score = sum(l.weight.pow(2).sum(1) for l in (m.to_q, m.to_k, m.to_v)) + m.to_out[0].weight.pow(2).sum(0)
            perm = _group_perm(score, d)
            for l in (m.to_q, m.to_k, m.to_v):
                _permute_rows(l, perm)
            _permute_cols(m.to_out[0], perm)
        elif site.kind == "ffn":
            fin, fout = ff_in(m), ff_out(m)
            inner = fout.in_features
            score = fout.weight.pow(2).sum(0) + fin.weight[:inner].pow(2).sum(1)
            perm = _group_perm(score, 1)
            _permute_rows(fin, torch.cat([perm, perm + inner]) if _is_gated(m) else perm)
            _permute_cols(fout, perm)
