"""Recipes: ordered rules from layers to configs. First match wins; ``None`` leaves a layer alone.

    Recipe([
        ("lm_head", None),                                  # glob on the module name
        ("*.mlp.*", Int4WeightOnlyConfig(group_size=64)),
        (torch.nn.Linear, Int8WeightOnlyConfig()),          # a module type
        (lambda site: site.out_features > 4096, None),      # a predicate on the layer
    ])

Names are the fully qualified module names from ``nn_module_stack`` (``encoder.layer.0.attention.self.query``).
A string matches with ``fnmatch`` (``*`` crosses dots); a compiled ``re.Pattern`` with ``fullmatch``.

Embeddings (``aten.embedding`` of a stored table) are quantized only where a rule names them, by
name or module type: ``("*.embed_tokens", Int8WeightOnlyConfig())`` or ``(torch.nn.Embedding, ...)``
stores int8 rows with a scale each. Predicates and a plain config apply to linears only.
"""
import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Optional, Union

from .schemes import config_from_dict, config_from_string, config_to_dict, config_types
from .passes.embeddings import EmbeddingSite
from .plan import Plan
from .passes.linears import LinearSite
from .runtime.errors import fail

Matcher = Union[str, "re.Pattern[str]", type, Callable[[LinearSite], bool]]


@dataclass(frozen=True)
class Rule:
    """One rule: which layers (``match``), and what they become (a config, or ``None`` to leave them)."""

    match: Matcher
    config: Optional[Any]

    def __post_init__(self):
        if not isinstance(self.match, (str, re.Pattern, type)) and not callable(self.match):
            raise fail("match", "a name glob, a compiled regex, a module type or a predicate", self.match)
        if self.config is not None and not isinstance(self.config, config_types()):
            raise fail("config", "a qcompiler config or None", self.config)

    def matches(self, site: Union[LinearSite, EmbeddingSite]) -> bool:
        """Whether the rule names ``site``; an embedding only by its name or module type, never by a predicate."""
        m = self.match
        if isinstance(m, str):
            return fnmatchcase(site.name, m)
        if isinstance(m, re.Pattern):
            return m.fullmatch(site.name) is not None
        if isinstance(m, type):
            return site.module_type == f"{m.__module__}.{m.__qualname__}"
        return isinstance(site, LinearSite) and bool(m(site))


@dataclass(frozen=True)
class Recipe:
    """Ordered rules; the first whose ``match`` fits a layer decides its config. A recipe from
    :func:`qcompiler.autoquant` also carries its ``plan`` (the measurements behind each rule)."""

    rules: tuple
    plan: Optional[Plan] = None

    def __init__(self, rules, plan: Optional[Plan] = None):
        object.__setattr__(self, "rules", tuple(r if isinstance(r, Rule) else Rule(*r) for r in rules))
        object.__setattr__(self, "plan", plan)

    def config_for(self, site: LinearSite):
        """``(config, None)`` for the first matching rule, or ``(None, reason)``."""
        for i, rule in enumerate(self.rules):
            if rule.matches(site):
                return (rule.config, None) if rule.config is not None else (None, f"left alone by recipe rule {i}")
        return None, "no recipe rule matched"

    def to_json(self) -> str:
        """The rules as ``from_json`` reads them (with the plan, where there is one). Rules must match by name glob;
        a config is written as its alias where the alias names it exactly, else as :func:`config_to_dict`'s dict
        (every field), so any config round-trips."""
        rows = [{"match": _glob(i, r.match), "config": _alias(i, r.config)} for i, r in enumerate(self.rules)]
        return json.dumps(rows if self.plan is None else {"rules": rows, "plan": self.plan.to_dict()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        """``[{"match": "*.mlp.*", "config": "int4wo-64"}, {"match": "lm_head", "config": null}, ...]``, or
        ``{"rules": [...], "plan": {...}}`` as :meth:`to_json` writes an autoquant recipe. A config is an alias or
        a dict (``{"scheme": "int4wo", "group_size": 64, "zero_point_domain": "int", ...}``)."""
        data = json.loads(text)
        plan = None
        if isinstance(data, dict) and "rules" in data:
            data, plan = data["rules"], (Plan.from_dict(data["plan"]) if data.get("plan") is not None else None)
        if not isinstance(data, list) or not all(isinstance(r, dict) and "match" in r for r in data):
            raise fail("recipe", 'a JSON list of {"match": glob, "config": scheme or null}', text[:80])
        rules = [(r["match"], _config(r.get("config"))) for r in data]
        return cls(rules, plan)


def _glob(i: int, match) -> str:
    if not isinstance(match, str):
        raise fail(f"rule {i}'s match, to be written as JSON,", "a name glob", match)
    return match


def _alias(i: int, config) -> Union[None, str, dict]:
    """A config's JSON: its alias where that names it exactly, else every field."""
    if config is None:
        return None
    try:
        if config_from_string(config.alias) == config:
            return config.alias
    except ValueError:
        pass
    return config_to_dict(config)


def _config(value):
    if value is None:
        return None
    return config_from_dict(value) if isinstance(value, dict) else config_from_string(value)


def as_recipe(config) -> Recipe:
    """A config means: that config for every eligible linear."""
    if isinstance(config, Recipe):
        return config
    if isinstance(config, config_types()):
        return Recipe([(lambda site: True, config)])
    raise fail("config", "a qcompiler config (e.g. Int8WeightOnlyConfig()) or a Recipe", config)
