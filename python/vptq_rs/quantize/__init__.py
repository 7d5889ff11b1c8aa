"""The VPTQ quantizer: per-layer vector quantization with a GPTQ-style column sweep.

Modules: :mod:`options` (every knob, validated up front), :mod:`kmeans_dispatch`
(Hessian-weighted k-means on CPU/CUDA), :mod:`codebook` (nearest-centroid search, int8
codebooks), :mod:`norm`, :mod:`outliers`, :mod:`gptq` (the column sweep and the scalar
RTN/GPTQ baselines), :mod:`residual`, :mod:`vptq` (one Linear end to end), :mod:`bits`
(true bits per weight) and :mod:`run` (a whole model, resumable).
"""
