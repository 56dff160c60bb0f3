"""Annotate: decide what each linear (and each embedding a recipe names) becomes. Writes
``node.meta["qspec"]`` or ``node.meta["qskip"]``.

A rule function maps a :class:`LinearSite` or an :class:`EmbeddingSite` to ``(config, None)`` or
``(None, reason)``. Layers that cannot take their config are skipped with the reason; nothing is
skipped silently. An embedding no rule gives a config stays as it is, unreported (not a layer the
recipe asked for).
"""
from typing import Callable

from torch.fx import GraphModule

from . import embeddings
from .embeddings import embedding_sites
from .linears import LinearSite, linear_sites
from .pattern import stored


def _unfit(site: LinearSite, gm: GraphModule, spec) -> str:
    if site.weight is None:
        return "weight is computed at run time"
    w = stored(gm, site.weight)
    if w.ndim != 2:
        return f"weight has {w.ndim} dimensions, not 2"
    if not w.is_floating_point():
        return f"weight dtype {w.dtype} is not floating point"
    return spec.weight.unfit(tuple(w.shape))


def annotate(gm: GraphModule, choose: Callable) -> list:
    """Mark every linear with its QuantSpec or a skip reason; return the sites."""
    sites = linear_sites(gm)
    for site in sites:
        site.node.meta.pop("qspec", None)
        site.node.meta.pop("qskip", None)
        config, reason = choose(site)
        if config is not None:
            spec = config.spec()
            reason = _unfit(site, gm, spec)
            if reason is None:
                site.node.meta["qspec"] = spec
                continue
            reason = f"{spec.scheme}: {reason}"
        site.node.meta["qskip"] = reason
    return sites + _annotate_embeddings(gm, choose)


def _annotate_embeddings(gm: GraphModule, choose: Callable) -> list:
    sites = []
    for site in embedding_sites(gm):
        site.node.meta.pop("qspec", None)
        site.node.meta.pop("qskip", None)
        config, _ = choose(site)
        if config is None:
            continue
        spec = config.spec()
        reason = embeddings.unfit(spec, stored(gm, site.weight))
        site.node.meta.update({"qskip": f"{spec.scheme}: {reason}"} if reason else {"qspec": spec})
        sites.append(site)
    return sites
