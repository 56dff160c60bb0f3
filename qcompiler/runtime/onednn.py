"""oneDNN's prepacked int8 linear, as a lowered program calls it: ``onednn.qlinear_prepack`` traceable.

``torch.ops.onednn.qlinear_pointwise`` (the kernel PT2E's x86 path reaches) takes its int8
weight prepacked by ``torch.ops.onednn.qlinear_prepack`` into oneDNN's blocked layout for
this machine. PyTorch registers no fake implementation for the prepack, so a graph that
calls it cannot be exported or compiled; Inductor's own passes only insert it after
tracing. Importing this module registers one: the packed weight is an int8 [K, N] tensor
(the transposed weight), which is the shape ``qlinear_pointwise``'s meta function reads.

In a program packaged with freezing, Inductor folds the prepack on the stored weight into
a constant: the ``.pt2`` holds the blocked weight and calls only ``qlinear_pointwise``. A
program run eagerly (``program.module()``) prepacks on every call: correct, only slow.
"""
import torch


def _register_fake_prepack() -> None:
    @torch.library.register_fake("onednn::qlinear_prepack")
    def _(weight: torch.Tensor, x_shape=None) -> torch.Tensor:
        return weight.new_empty((weight.shape[1], weight.shape[0]))


def _needs_fake_prepack() -> bool:
    if not hasattr(torch.ops.onednn, "qlinear_prepack"):
        return False
    from torch._library.simple_registry import singleton
    return singleton.find("onednn::qlinear_prepack").fake_impl.kernel is None


if _needs_fake_prepack():
    _register_fake_prepack()


def qlinear_available() -> bool:
    """Whether this PyTorch build has oneDNN's int8 linear (x86 builds with mkldnn)."""
    return hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()
