"""User-facing quantization configs (kept for the spelling ``qcompiler.configs.X``; they live in
``qcompiler/schemes/``, one file per scheme, and the registry there lists and parses them).

``CONFIG_TYPES`` and ``SCHEME_FORMS`` are the built-in schemes'; ``config_types()`` and ``scheme_forms()`` also
see schemes registered later.
"""
from .schemes import (  # noqa: F401
    AQLMWeightOnlyConfig, CodebookWeightOnlyConfig, Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig,
    Int4WeightOnlyConfig, Int8DynamicActivationInt4WeightConfig, Int8DynamicActivationInt8WeightConfig,
    Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig, config_from_dict, config_from_string,
    config_to_dict, config_types, scheme_forms)
from .schemes.int4 import INT4_GROUP_SIZES  # noqa: F401
from .schemes.int8 import OBSERVERS  # noqa: F401

CONFIG_TYPES = config_types()
SCHEME_FORMS = scheme_forms()
