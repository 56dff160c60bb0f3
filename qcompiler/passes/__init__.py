"""Graph passes over the ATen graph, written with one pattern-rewrite API.

The API: ``find``, ``replace``, ``replace_all``, ``rewrite`` (``pattern``).

Stages: annotate (``annotate``), observe (``observe``), convert's rewrite to the
reference Q/DQ pattern (``reference``); the algorithms that choose quantized
values sit beside them: ``algorithms`` (their configs), ``gptq``, ``hqq``, ``smoothing``
(AWQ and SmoothQuant), ``calibration`` (Hessian windows) and ``weights`` (which one
quantizes a weight). Round-to-nearest lives on the weight specs in ``spec``.
"""
from .pattern import Match, find, inherit_meta, prune, replace, replace_all, rewrite, store_tensor

__all__ = ["Match", "find", "replace", "replace_all", "rewrite", "prune", "store_tensor", "inherit_meta"]
