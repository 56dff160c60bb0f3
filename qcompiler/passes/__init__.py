"""Graph passes over the ATen graph, written with one pattern-rewrite API (``find``, ``replace``, ``rewrite``).

Stages: annotate (``annotate``), observe (``observe``), convert's rewrite to the
reference Q/DQ pattern (``reference``); the algorithms that choose quantized
values sit beside them: ``algorithms`` (their configs), ``gptq``, ``hqq``, ``smoothing``
(AWQ and SmoothQuant), ``calibration`` (Hessian windows) and ``weights`` (which one
quantizes a weight). Round-to-nearest lives on the weight specs in ``spec``.
"""
from .pattern import Match, find, prune, replace, rewrite

__all__ = ["Match", "find", "replace", "rewrite", "prune"]
