"""qcompiler::triton_cache_attention, cache_attention for CUDA in Triton: against the float64 reference for every
cache dtype, with and without slots, never reading past a sequence's positions (Triton's interpreter here; compiled
for sm_90 by tests/compile_for_hopper.py)."""
import pytest
import torch

from qcompiler.runtime import cache_attention
from test_cache_attention import STORES, _case, _error

triton_attention = pytest.importorskip("qcompiler.runtime.triton_attention")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# B, kv heads, new tokens L, groups, D, positions S, starts: decode, decode of two at different places, a prefill
# (rows in two blocks of 16) and a head dim that is no power of two
CASES = [(1, 2, 1, 4, 64, 80, [17]), (2, 1, 1, 2, 32, 150, [0, 140]), (1, 1, 9, 2, 16, 40, [3]),
         (1, 1, 2, 1, 40, 70, [60])]


def _on(args):
    return [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}-h{}-l{}-g{}-d{}-s{}".format(*c[:6]))
def test_matches_the_reference(case, store):
    args = _case(*case, store)
    out = triton_attention.OP(*_on(args))
    assert out.shape == args[0].shape and out.dtype == torch.float32
    assert _error(out.cpu(), cache_attention.reference(*args)) < 1e-5


@pytest.mark.parametrize("store", STORES)
def test_each_sequence_reads_its_slot_and_nothing_past_its_positions(store):
    q, k, v, ks, vs, _, groups, scale = _case(4, 2, 2, 4, 32, 100, [0] * 4, store)
    q, start, slot = q[:2], torch.tensor([70, 7]), torch.tensor([3, 1])
    ref = cache_attention.reference(q, k, v, ks, vs, start, groups, scale, slot)
    poisoned = [t.clone() if t is not None else None for t in (k, v, ks, vs)]
    for s, first in zip(slot.tolist(), start.tolist()):
        for t in poisoned:
            if t is not None and t.is_floating_point():
                t[s, :, first + 2:] = float("nan")
    out = triton_attention.OP(*_on([q, *poisoned, start, groups, scale, slot]))
    assert _error(out.cpu(), ref) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
@pytest.mark.parametrize("slots", [None, 2])
def test_a_cuda_lm_attends_with_the_triton_kernel_and_matches_the_model(slots):
    """capture_lm on the GPU: its attention is this kernel; the tokens match the model's own greedy ones."""
    import qcompiler as qc
    from conftest import tiny_slots_llama
    model = tiny_slots_llama().cuda()
    prog = qc.capture_lm(model, 64, slots=slots)
    assert any("triton_cache_attention" in str(n.target) for n in prog.graph.nodes)
    prompts = [torch.randint(0, 128, (n,), device="cuda") for n in (5, 3)]
    got = qc.generate(prog.module(), prompts if slots else prompts[0][None], 6)
    for prompt, tokens in zip(prompts, got if slots else [got[0]]):
        ids = prompt[None]
        for _ in range(6):
            with torch.no_grad():
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
        assert tokens.tolist() == ids[0, len(prompt):].tolist()
