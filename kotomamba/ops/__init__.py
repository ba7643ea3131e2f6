"""kotomamba.ops: the numerical kernels of Mamba-1 and Mamba-2, each beside its pure-PyTorch twin.

Every public op (``causal_conv1d``, ``selective_scan``, ``ssd_chunk_scan``, ``add_rms_norm``,
``gated_rms_norm``, ``chunked_cross_entropy`` ...) dispatches through :mod:`kotomamba.ops.dispatch`:
on CUDA with mamba-ssm / causal-conv1d importable it calls their kernels, otherwise (or when
``KOTOMAMBA_FORCE_REFERENCE=1``) the ``*_ref`` function written here in plain PyTorch.
"""
