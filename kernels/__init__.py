"""Standalone scan kernels for worldrl: Triton on CUDA; on CPU a compiled C loop for the linear
scan (built on first use when there is a C compiler) and vectorised PyTorch otherwise.

Imports torch (and triton when installed) only; never worldrl, agents, envs, gymnasium or torchrl.

    linear_scan(a, b, h0=None, reset=None, reverse=False, return_last=False)   [B, T, D]
    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                   delta_softplus=False, return_last_state=False, initial_state=None)
    selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False)
    ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                   initial_states=None, seq_idx=None, dt_softplus=False,
                   dt_limit=(0.0, inf), return_final_states=False)   [batch, T, nheads, headdim]
    ssd_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                     dt_softplus=False, dt_limit=(0.0, inf))
    mamba_chunk_scan_combined = ssd_chunk_scan (mamba_ssm's name)

Every op takes ``backend="auto"|"triton"|"torch"|"ref"`` (linear_scan also ``"native"``);
"auto" follows ``$KERNELS_BACKEND`` when it is set, else CUDA -> Triton and CPU -> the native loop
for linear_scan when it built, else the vectorised PyTorch path (the SSD ops: the chunked
PyTorch form; their Triton forward recomputes the PyTorch form for the backward). See
kernels/README.md.
"""

from kernels._triton_utils import BACKENDS, HAS_TRITON
from kernels.linear_scan import linear_scan, linear_scan_ref
from kernels.selective_scan import selective_scan, selective_scan_fn, selective_scan_ref
from kernels.selective_state_update import selective_state_update, selective_state_update_ref
from kernels.ssd import (
    SSD_BACKENDS,
    mamba_chunk_scan_combined,
    ssd_chunk_scan,
    ssd_chunk_scan_ref,
    ssd_state_update,
    ssd_state_update_ref,
)

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "SSD_BACKENDS",
    "linear_scan",
    "linear_scan_ref",
    "mamba_chunk_scan_combined",
    "selective_scan",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "ssd_chunk_scan",
    "ssd_chunk_scan_ref",
    "ssd_state_update",
    "ssd_state_update_ref",
]
