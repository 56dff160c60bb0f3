"""The CPU peers of ``bench_cpu_peers.py``, each built the way its own documentation recommends.

- AOTInductor packages of any ExportedProgram, freezing on or off (``aoti_package``). Freezing is what turns
  linears into oneDNN/MKL prepacked calls and PT2E's q/dq pairs into ``onednn.qlinear_pointwise``; AOTInductor
  silently ignores it unless compilation runs under ``torch.no_grad()``, which ``aoti_package`` does.
- PT2E x86 int8, static or dynamic (``pt2e_program``): ``torchao.quantization.pt2e`` prepare/convert with
  ``X86InductorQuantizer``, re-exported for AOTInductor (package it with ``aoti_package(..., pt2e=True)``).
- torchao int8dq / int8wo on a copy of the model (``torchao_program``; configs in ``peer_torchao.py``).
- ONNX Runtime: fp32 export (TorchScript exporter; BERT fusions from ``onnxruntime.transformers`` where asked),
  ``quantize_dynamic`` (QInt8 per channel, MatMuls with constant weights only) and ``MatMulNBitsQuantizer``
  (4-bit, symmetric, int8 compute); run by ``OrtModel`` with the given intra-op threads and spinning off.

Every import of a peer package happens inside the function that needs it, so a missing package fails only
the systems that use it.
"""
import collections
import contextlib
import re
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import torch

# Names of AOTInductor shim calls worth reporting: the ones that do a model's arithmetic.
_COMPUTE_CALL = re.compile(r"\baoti_torch_(?:cpu_)?(\w*(?:mm|linear|matmul|conv|int4|int8|pack|attention|flash)\w*)")
QUANTIZED_ONNX_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "MatMulNBits",
                      "QGemm", "DynamicQuantizeLinear")


def call(fn, item):
    """``fn`` applied to a calibration item or inputs: a dict is keywords, a tuple positional, else one argument."""
    if isinstance(item, dict):
        return fn(**item)
    if isinstance(item, tuple):
        return fn(*item)
    return fn(item)


# ---------------------------------------------------------------- AOTInductor

def aoti_package(program: torch.export.ExportedProgram, path: Path, freezing: bool = True, pt2e: bool = False,
                 options: Optional[dict] = None) -> Path:
    """AOTInductor-compile ``program`` into ``path``; with ``pt2e`` the x86 quantization passes are active.
    ``options``: more Inductor options (e.g. ``cpp.march`` for another target)."""
    passes = _pt2e_inductor_passes() if pt2e else contextlib.nullcontext()
    with torch.no_grad(), passes:
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs={"freezing": freezing, **(options or {})})
    return Path(path)


def aoti_load(path: Path):
    """A callable running the package at ``path``."""
    return torch._inductor.aoti_load_package(str(path))


def aoti_calls(path: Path) -> list:
    """The compute calls (matmuls, linears, packed kernels) the package's generated C++ makes, sorted."""
    with zipfile.ZipFile(path) as z:
        source = "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith(".cpp"))
    return sorted(set(_COMPUTE_CALL.findall(source)))


# ---------------------------------------------------------------- PT2E (torchao.quantization.pt2e), x86

def _x86_quantizer_module():
    """torchao's x86_inductor_quantizer, imported without leaving its process-wide pre-grad pass set.

    Importing it sets ``torch._inductor.config.pre_grad_custom_pass`` for every later compilation and registers
    its weight-pack patterns (which only match PT2E's q/dq ops); the pre-grad pass is put back here and set
    only while a PT2E program compiles (``_pt2e_inductor_passes``).
    """
    saved = torch._inductor.config.pre_grad_custom_pass
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    finally:
        torch._inductor.config.pre_grad_custom_pass = saved
    return xiq


@contextlib.contextmanager
def _pt2e_inductor_passes():
    _x86_quantizer_module()
    from torchao.quantization.pt2e.inductor_passes.x86 import quant_lift_up
    with torch._inductor.config.patch(pre_grad_custom_pass=quant_lift_up):
        yield


def pt2e_program(model, args: tuple, kwargs: dict, dynamic_shapes, calibration: Iterable,
                 is_dynamic: bool) -> torch.export.ExportedProgram:
    """``model`` quantized by PT2E's X86InductorQuantizer (int8, static or dynamic activations), re-exported."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    xiq = _x86_quantizer_module()
    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config(is_dynamic=is_dynamic))
    captured = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for item in calibration:
            call(prepared, item)
    return torch.export.export(convert_pt2e(prepared), args, kwargs, dynamic_shapes=dynamic_shapes)


# ---------------------------------------------------------------- torchao quantize_

def torchao_program(model, scheme: str, args: tuple, kwargs: dict, dynamic_shapes) -> torch.export.ExportedProgram:
    """A copy of ``model`` quantized by torchao's ``quantize_`` for ``scheme`` (int8dq, int8wo), exported."""
    import peer_torchao
    return torch.export.export(peer_torchao.quantized_model(model, scheme), args, kwargs, dynamic_shapes=dynamic_shapes)


# ---------------------------------------------------------------- ONNX Runtime

class Positional(torch.nn.Module):
    """``module`` called with keywords ``names`` taken positionally, returning the tuple of the fields ``outputs``
    (the TorchScript exporter passes inputs positionally and wants tensors out)."""

    def __init__(self, module, names: Sequence[str], outputs: Sequence[str]):
        super().__init__()
        self.module, self.names, self.outputs = module, tuple(names), tuple(outputs)

    def forward(self, *inputs):
        out = self.module(**dict(zip(self.names, inputs)))
        return tuple(out[name] for name in self.outputs)


def onnx_export(module, args: tuple, path: Path, input_names: Sequence[str], output_names: Sequence[str],
                dynamic_axes: Dict[str, Dict[int, str]]) -> Path:
    """``module`` exported to ONNX (opset 17) with the TorchScript exporter, whose graphs ORT fuses best."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes)
    return path


def onnx_bert_fusions(src: Path, dst: Path) -> Path:
    """``onnxruntime.transformers``' BERT fusions (SkipLayerNormalization, BiasGelu, Attention where it matches)
    applied offline, without ORT's hardware-specific online optimisations baked in."""
    from onnxruntime.transformers import optimizer
    dst.parent.mkdir(parents=True, exist_ok=True)
    optimized = optimizer.optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    optimized.save_model_to_file(str(dst))
    return dst


def ort_dynamic_int8(src: Path, dst: Path) -> Path:
    """ORT's dynamic int8 quantization: QInt8 weights per output channel, MatMuls with constant weights only.

    ``DefaultTensorType`` float: ONNX shape inference cannot type the outputs of the contrib ops the BERT
    fusions insert (SkipLayerNormalization, BiasGelu); ORT's own error message recommends this.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


def ort_matmul_nbits(src: Path, dst: Path, bits: int = 4, block_size: int = 32) -> Path:
    """ORT's MatMulNBits: ``bits``-bit symmetric weights in blocks of ``block_size``, int8 compute
    (accuracy_level 4)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=4)
    quantizer.process()
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def onnx_ops(path: Path, names: Iterable[str] = QUANTIZED_ONNX_OPS) -> dict:
    """How many nodes of each op type in ``names`` the ONNX file holds."""
    import onnx
    counts = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {name: counts[name] for name in names if counts[name]}


class OrtModel:
    """An ONNX Runtime CPU session called like the torch model (tensors in, a tuple of tensors out)."""

    def __init__(self, path: Path, threads: int, input_names: Optional[Sequence[str]] = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sessions share the cores
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = list(input_names or [i.name for i in self.session.get_inputs()])

    def __call__(self, *args, **kwargs):
        feeds = {**dict(zip(self.names, args)), **kwargs}
        outs = self.session.run(None, {name: value.numpy() for name, value in feeds.items()})
        return tuple(torch.from_numpy(o) for o in outs)


def file_mb(path: Path) -> float:
    """Size of the file in MB."""
    return round(Path(path).stat().st_size / 1e6, 2)
