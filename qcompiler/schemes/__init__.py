"""The schemes: each declared once, in one file, by its config class (``registry.scheme``).

    int8.py      int8wo, int8dq, int8static
    float8.py    fp8wo, fp8dq
    int4.py      int4wo-<g>, int8da-int4w-<g>
    codebook.py  codebook-<bits>[-<block_rows>][-float]
    aqlm.py      aqlm-<M>x<B>-g<g>
    intx.py      intx-<bits>-<group>[-float], int8da-intx-<bits>-<group>
    fpx.py       fp6, fpx-<e>-<m>
    mx.py        mxfp4, mxfp8
    nvfp4.py     nvfp4
    nf4.py       nf4[-<block>] (its grid declared by its values)

A new scheme is a new file here (its config: fields, validation, ``alias``, ``spec()``; and its registration),
imported below; aliases, help, recipes' JSON and the algorithms' lists then know it.
"""
from .registry import (  # noqa: F401  (the registry's API)
    SCHEMES, Scheme, algorithm_families, config_from_dict, config_from_string, config_to_dict, config_types, scheme,
    scheme_forms)
from .int8 import Int8DynamicActivationInt8WeightConfig, Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig
from .float8 import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig
from .int4 import Int4WeightOnlyConfig, Int8DynamicActivationInt4WeightConfig
from .codebook import CodebookWeightOnlyConfig
from .aqlm import AQLMWeightOnlyConfig
from .intx import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
from .fpx import FpxWeightOnlyConfig
from .mx import MXWeightOnlyConfig
from .nvfp4 import NVFP4WeightOnlyConfig
from .nf4 import NF4WeightOnlyConfig

__all__ = [
    "SCHEMES", "Scheme", "scheme", "scheme_forms", "config_types", "config_from_string", "config_to_dict",
    "config_from_dict", "algorithm_families",
    "Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig", "Int8StaticActivationInt8WeightConfig",
    "Float8WeightOnlyConfig", "Float8DynamicActivationFloat8WeightConfig", "Int4WeightOnlyConfig",
    "Int8DynamicActivationInt4WeightConfig", "CodebookWeightOnlyConfig", "AQLMWeightOnlyConfig",
    "IntxWeightOnlyConfig", "Int8DynamicActivationIntxWeightConfig", "FpxWeightOnlyConfig", "MXWeightOnlyConfig",
    "NVFP4WeightOnlyConfig",
    "NF4WeightOnlyConfig",
]
