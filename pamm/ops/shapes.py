"""The scan ops' input checks, shared by every backend and by both multi-direction paths.

A single scan takes mamba-ssm's layouts: u, delta (b, d, l); A (d, n) real; B, C (b, n, l) or grouped
(b, g, n, l) with g dividing d; D, delta_bias (d,); z (b, d, l). A multi-direction scan over K orders
takes each of u, delta, A, B, C, D, delta_bias either shared or with a direction axis: u, delta
(b, K, d, L); A (K, d, n); B, C (b, K, g, n, L); D, delta_bias (K, d); and perm (K, L).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ScanShape", "MultiShape", "check_scan", "check_multi", "MERGES"]

MERGES = ("sum", "mean")


@dataclass(frozen=True)
class ScanShape:
    """Sizes of one single-direction scan call."""

    batch: int
    channels: int
    length: int
    d_state: int
    groups: int


@dataclass(frozen=True)
class MultiShape:
    """Sizes of one multi-direction call, and which inputs carry a direction axis."""

    batch: int
    channels: int
    length: int
    d_state: int
    groups: int
    directions: int
    u_per_dir: bool
    delta_per_dir: bool
    A_per_dir: bool
    B_per_dir: bool
    C_per_dir: bool
    D_per_dir: bool
    bias_per_dir: bool


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_A(A: torch.Tensor, channels: int, per_dir_shape: tuple[int, ...] = ()) -> int:
    expected = (*per_dir_shape, channels)
    if A.dim() != len(expected) + 1 or _shape(A)[:-1] != expected:
        raise ValueError(f"A must be ({', '.join(map(str, expected))}, d_state), got {_shape(A)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    return A.shape[-1]


def _groups(name: str, mat: torch.Tensor, channels: int) -> int:
    groups = mat.shape[-3] if mat.dim() >= 4 else 1
    if groups < 1 or channels % groups:
        raise ValueError(f"{name}: group count {groups} does not divide the {channels} channels")
    return groups


def check_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> ScanShape:
    """Check one scan's shapes (see the module docstring); its sizes, or ValueError naming the input."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, length), got {_shape(u)}")
    batch, channels, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must match u {_shape(u)}, got {_shape(delta)}")
    d_state = _check_A(A, channels)
    groups = None
    for name, mat in (("B", B), ("C", C)):
        if mat.dim() not in (3, 4):
            raise ValueError(f"{name} must be (batch, d_state, length) or (batch, groups, d_state, length), "
                             f"got {_shape(mat)}")
        if mat.shape[0] != batch or mat.shape[-2] != d_state or mat.shape[-1] != length:
            raise ValueError(f"{name} has shape {_shape(mat)}; expected batch {batch}, d_state {d_state}, "
                             f"length {length}")
        mat_groups = _groups(name, mat, channels)
        if groups is not None and mat_groups != groups:
            raise ValueError(f"B and C must have the same group count, got {groups} and {mat_groups}")
        groups = mat_groups
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and _shape(vec) != (channels,):
            raise ValueError(f"{name} must be ({channels},), got {_shape(vec)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must match u {_shape(u)}, got {_shape(z)}")
    return ScanShape(batch, channels, length, d_state, groups)


def check_multi(u, delta, A, B, C, D, delta_bias, perm, inverse=None, merge: str = "sum") -> MultiShape:
    """Check a multi-direction call's shapes (see the module docstring; B and C may also be (b, n, L)).
    ``inverse``, when given, must be (K, L) like ``perm``."""
    if merge not in MERGES:
        raise ValueError(f"merge must be 'sum' or 'mean', got {merge!r}")
    if perm.dim() != 2:
        raise ValueError(f"perm must be (directions, length), got {_shape(perm)}")
    if inverse is not None and inverse.shape != perm.shape:
        raise ValueError(f"inverse must be (directions, length) like perm {_shape(perm)}, got {_shape(inverse)}")
    K, length = perm.shape
    if u.dim() not in (3, 4):
        raise ValueError(f"u must be (b, d, L) or (b, K, d, L), got {_shape(u)}")
    if u.shape[-1] != length:
        raise ValueError(f"u has {u.shape[-1]} tokens but the orders have {length}")
    batch, channels = u.shape[0], u.shape[-2]
    shared, per_dir = (batch, channels, length), (batch, K, channels, length)
    flags = {}
    for name, x in (("u", u), ("delta", delta)):
        if _shape(x) not in (shared, per_dir):
            raise ValueError(f"{name} must be {shared} or {per_dir} (per direction), got {_shape(x)}")
        flags[name] = x.dim() == 4
    A_per_dir = A.dim() == 3
    d_state = _check_A(A, channels, (K,) if A_per_dir else ())
    groups = None
    for name, mat in (("B", B), ("C", C)):
        if mat.dim() not in (3, 4, 5):
            raise ValueError(f"{name} must be (b, n, L), (b, G, n, L) or (b, K, G, n, L), got {_shape(mat)}")
        mat_groups = _groups(name, mat, channels)
        expected = {3: (batch, d_state, length), 4: (batch, mat_groups, d_state, length),
                    5: (batch, K, mat_groups, d_state, length)}[mat.dim()]
        if _shape(mat) != expected:
            raise ValueError(f"{name} must be {expected}, got {_shape(mat)}")
        if groups is not None and mat_groups != groups:
            raise ValueError(f"B and C must have the same group count, got {groups} and {mat_groups}")
        groups = mat_groups
        flags[name] = mat.dim() == 5
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and _shape(vec) not in ((channels,), (K, channels)):
            raise ValueError(f"{name} must be ({channels},) or ({K}, {channels}) (per direction), got {_shape(vec)}")
        flags[name] = vec is not None and vec.dim() == 2
    return MultiShape(batch, channels, length, d_state, groups, K, flags["u"], flags["delta"], A_per_dir,
                      flags["B"], flags["C"], flags["D"], flags["delta_bias"])
