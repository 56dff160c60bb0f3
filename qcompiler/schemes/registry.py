"""The scheme registry: each scheme declared once, by the config class that names it.

    @scheme("int4wo", forms=("int4wo-<32|64|128|256>",), alias=r"int4wo-(\\d+)",
            parse=lambda g: Int4WeightOnlyConfig(group_size=int(g)))
    @dataclass(frozen=True)
    class Int4WeightOnlyConfig: ...            # fields, validation, .alias, .spec()

A config class is frozen and validated at construction; ``alias`` names it (``int4wo-64``) and ``spec()`` says
what convert stores (a :class:`~qcompiler.passes.spec.QuantSpec`). Everything that lists or parses schemes reads
this registry: :func:`config_from_string` (the CLI, recipes' JSON), :func:`scheme_forms` (help and errors),
:data:`config_types`, the algorithms' and embeddings' messages; :func:`config_to_dict` and
:func:`config_from_dict` write and read any config, every field, as JSON (versioned, as torchao's
``config_to_dict``).
"""
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..passes.algorithm import Algorithm
from ..passes.algorithms import REGISTRY as ALGORITHMS
from ..passes.algorithms import check_algorithm as check_spec
from ..passes.algorithms import from_name
from ..runtime.errors import fail

JSON_VERSION = 1  # the layout config_to_dict writes


@dataclass(frozen=True)
class Scheme:
    """One scheme: its ``family`` (the alias's stem), config class, the alias ``forms`` help shows, and how an
    alias parses: the ``alias`` regex (full match) whose groups ``parse`` turns into a config."""

    family: str
    config: type
    forms: Tuple[str, ...]
    alias: "re.Pattern[str]"
    parse: Callable[..., Any]


SCHEMES: Dict[str, Scheme] = {}  # family -> scheme, in registration order


def scheme(family: str, *, forms: Tuple[str, ...] = (), alias: Optional[str] = None,
           parse: Optional[Callable[..., Any]] = None) -> Callable[[type], type]:
    """Register the decorated config class as scheme ``family``. Without ``alias`` the family is the whole alias
    and the config's defaults are what it names."""
    def register(cls: type) -> type:
        known = SCHEMES.get(family)
        if known is not None and (known.config.__module__, known.config.__qualname__) != (cls.__module__,
                                                                                         cls.__qualname__):
            raise ValueError(f"qcompiler: scheme {family!r} is registered already, by {known.config.__module__}."
                             f"{known.config.__qualname__}")  # the same class defined again (a re-run cell) replaces it
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(f"qcompiler: a scheme's config must be a frozen dataclass; {cls.__name__} is not")
        pattern = re.compile(alias if alias is not None else re.escape(family))
        SCHEMES[family] = Scheme(family, cls, forms or (family,), pattern, parse or cls)
        cls.family = family
        return cls
    return register


def suffixed(alias: str, algorithm) -> str:
    """A config's alias with its algorithm's ``+name`` suffix, where it has one."""
    return alias if algorithm is None else f"{alias}+{getattr(algorithm, 'name', algorithm)}"


class FamilyAlias:
    """For a config whose alias is its family, plus its algorithm's suffix (``int8wo+gptq``): the alias, and the
    algorithm checked at construction. Subclasses declare an ``algorithm`` field."""

    family: str = ""
    algorithm: Optional[object] = None

    def __post_init__(self):
        check_algorithm(self)

    @property
    def alias(self) -> str:
        return suffixed(self.family, self.algorithm)


def config_types() -> tuple:
    """Every registered config class."""
    return tuple(s.config for s in SCHEMES.values())


def scheme_forms() -> tuple:
    """Every alias form, for help and error messages."""
    return tuple(f for s in SCHEMES.values() for f in s.forms) + (
        f"any of these +{'|+'.join(ALGORITHMS)} (where the algorithm applies)",)


def config_from_string(name: str):
    """Parse a scheme alias such as ``"int8wo"``, ``"int4wo-64"`` or ``"codebook-3"`` into its config; a
    ``+gptq`` / ``+hqq`` / ``+awq`` / ``+smoothquant`` suffix adds that algorithm (its defaults)."""
    base, plus, algo = (name or "").partition("+")
    if plus:
        config, algorithm = config_from_string(base), from_name(algo)
        if "algorithm" not in {f.name for f in dataclasses.fields(config)}:
            raise ValueError(f"qcompiler: {type(algorithm).__name__} does not apply to {base}; it supports "
                             f"{', '.join(algorithm_families(algorithm))}")
        return dataclasses.replace(config, algorithm=algorithm)
    for s in SCHEMES.values():
        m = s.alias.fullmatch(name or "")
        if m:
            return s.parse(*m.groups())
    raise fail("scheme", f"one of {', '.join(scheme_forms())}", name)


def algorithm_families(algorithm) -> list:
    """The families whose default config ``algorithm`` can serve (for messages)."""
    return [s.family for s in SCHEMES.values() if "algorithm" in {f.name for f in dataclasses.fields(s.config)}
            and algorithm.unsupported(s.config().spec()) is None]


def check_algorithm(config) -> None:
    """Raise where ``config.algorithm`` cannot serve the config's spec, naming the schemes it does apply to
    (configs call this from ``__post_init__``)."""
    try:
        check_spec(config.algorithm, config.alias, config.spec())
    except ValueError as e:
        if not isinstance(config.algorithm, Algorithm):
            raise
        families = algorithm_families(config.algorithm)
        raise ValueError(f"{e}; it applies to {', '.join(families) or 'no registered scheme'}") from None


# ------------------------------------------------------------------ JSON

def _to_json(value):
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if dataclasses.is_dataclass(value) and type(value) in ALGORITHMS.values():
        return {"algorithm": value.name, **{f.name: _to_json(getattr(value, f.name))
                                            for f in dataclasses.fields(value)}}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"qcompiler: a config field of type {type(value).__name__} has no JSON form")


def _from_json(value):
    if isinstance(value, dict) and set(value) == {"dtype"}:
        dtype = getattr(torch, str(value["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise fail("dtype", "a torch dtype name (e.g. bfloat16)", value["dtype"])
        return dtype
    if isinstance(value, dict) and "algorithm" in value:
        kwargs = {k: _from_json(v) for k, v in value.items() if k != "algorithm"}
        if value["algorithm"] not in ALGORITHMS:
            raise fail("algorithm", f"one of {', '.join(ALGORITHMS)}", value["algorithm"])
        return ALGORITHMS[value["algorithm"]](**kwargs)
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def config_to_dict(config) -> dict:
    """``{"scheme": family, "version": 1, <every field>: value}``: dtypes as ``{"dtype": "bfloat16"}``, an
    algorithm as ``{"algorithm": "gptq", <its fields>}``. :func:`config_from_dict` reads it back equal."""
    family = getattr(type(config), "family", None)
    if family not in SCHEMES or SCHEMES[family].config is not type(config):
        raise fail("config", "a registered qcompiler config", config)
    return {"scheme": family, "version": JSON_VERSION,
            **{f.name: _to_json(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}}


def config_from_dict(data: dict):
    """The config :func:`config_to_dict` wrote (fields left out take their defaults)."""
    if not isinstance(data, dict) or data.get("scheme") not in SCHEMES:
        raise fail("config", f"a dict with a \"scheme\" among {', '.join(SCHEMES)}", data)
    if data.get("version", JSON_VERSION) != JSON_VERSION:
        raise fail("config version", f"{JSON_VERSION} (this qcompiler's)", data.get("version"))
    cls = SCHEMES[data["scheme"]].config
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names - {"scheme", "version"})
    if unknown:
        raise fail(f"{data['scheme']} config field", f"one of {', '.join(sorted(names)) or '(none)'}", unknown[0])
    return cls(**{k: _from_json(v) for k, v in data.items() if k in names})
