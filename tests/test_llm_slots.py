"""Independent sequences (issue 33): a program captured with slots decodes sequences of different lengths in one
call, each in its own slot of the cache at its own position; qc.generate batches a list of prompts continuously
and each gets the tokens it would get alone; a finished or cancelled sequence's slot takes the next prompt."""
import pytest
import torch

import qcompiler as qc
from conftest import tiny_slots_llama

pytest.importorskip("transformers")

PROMPTS = [torch.randint(0, 128, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 3, 9, 1, 7)]


@pytest.fixture(scope="module")
def model():
    return tiny_slots_llama()


_PROGRAMS: dict = {}  # (id(model), slots, kv dtype) -> the captured program: each captured once (~2 s) per file


def _captured(model, slots=None, kv_cache_dtype=None):
    key = (id(model), slots, kv_cache_dtype)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = qc.capture_lm(model, 64, slots=slots, kv_cache_dtype=kv_cache_dtype)
    return _PROGRAMS[key]


def _alone(model, prompts, n, kv_cache_dtype=None):
    shared = _captured(model, kv_cache_dtype=kv_cache_dtype).module()
    return [qc.generate(shared, p[None], n)[0] for p in prompts]


@pytest.mark.parametrize("kv_cache_dtype", [None, torch.int8, torch.bfloat16])
def test_prompts_of_different_lengths_get_the_tokens_each_gets_alone(model, kv_cache_dtype):
    """Five prompts over two slots: three wait, and take the slots the first ones free."""
    run = _captured(model, 2, kv_cache_dtype).module()
    got = qc.generate(run, PROMPTS, 6)
    assert [g.tolist() for g in got] == [a.tolist() for a in _alone(model, PROMPTS, 6, kv_cache_dtype)]


def test_a_program_with_slots_takes_a_position_and_a_slot_per_row(model):
    """One call decodes two sequences at different positions in slots 2 and 0, exact against the model itself."""
    prog = _captured(model, 4)
    assert list(prog.graph_signature.user_inputs) == ["input_ids", "start", "slot"]
    m = prog.module()
    a, b = PROMPTS[0], PROMPTS[1]
    next_a = m(input_ids=a[None], start=torch.tensor([0]), slot=torch.tensor([2]))[0, -1].argmax()
    next_b = m(input_ids=b[None], start=torch.tensor([0]), slot=torch.tensor([0]))[0, -1].argmax()
    both = m(input_ids=torch.stack([next_a, next_b])[:, None], start=torch.tensor([5, 3]), slot=torch.tensor([2, 0]))
    with torch.no_grad():
        for row, (prompt, token) in enumerate(((a, next_a), (b, next_b))):
            ref = model(torch.cat([prompt, token[None]])[None]).logits[0, -1]
            torch.testing.assert_close(both[row, -1], ref, rtol=1e-5, atol=1e-5)


def test_a_prompt_prefilled_while_others_decode_leaves_them_unchanged(model):
    run = _captured(model, 3).module()
    batcher = qc.Batcher(run)
    first = batcher.submit(PROMPTS[2], 8)
    for _ in range(3):
        batcher.step()
    late = batcher.submit(PROMPTS[0], 8)
    while not batcher.idle:
        batcher.step()
    alone = _alone(model, [PROMPTS[2], PROMPTS[0]], 8)
    assert (first.tokens, late.tokens) == (alone[0].tolist(), alone[1].tolist())
    assert first.finish == late.finish == "length"


def test_a_long_prompt_is_prefilled_a_chunk_a_step_while_the_others_decode(model):
    """prefill_chunk=4: a 40-token prompt takes 10 steps to prefill, and the sequence already decoding makes a token in
    each of them; both get the tokens they get alone (the chunks write the cache as one prefill would)."""
    run = _captured(model, 2).module()
    batcher = qc.Batcher(run, prefill_chunk=4)
    first = batcher.submit(PROMPTS[1], 20)  # 3 tokens: one chunk
    batcher.step()
    assert len(first.tokens) == 1
    long_prompt = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(40))
    late = batcher.submit(long_prompt, 4)
    for step in range(10):
        made = batcher.step()
        assert [r for r, _ in made if r is first] == [first] and len(first.tokens) == step + 2
        assert late.filled == 4 * (step + 1) and len(late.tokens) == (step == 9)
    while not batcher.idle:
        batcher.step()
    alone = _alone(model, [PROMPTS[1], long_prompt], 20)
    assert (first.tokens, late.tokens) == (alone[0].tolist(), alone[1].tolist()[:4])
    with pytest.raises(ValueError, match="prefill_chunk must be an int >= 1"):
        qc.Batcher(run, prefill_chunk=0)


def test_an_end_token_or_a_cancel_frees_the_slot_for_the_next_prompt(model):
    run = _captured(model, 1).module()
    eos = _alone(model, [PROMPTS[1]], 3)[0][1].item()  # the second token this prompt makes
    batcher = qc.Batcher(run)
    ended, long, waiting = (batcher.submit(PROMPTS[1], 10, eos_token_id=eos), batcher.submit(PROMPTS[2], 50),
                            batcher.submit(PROMPTS[3], 2))
    while ended.finish is None:
        batcher.step()
    assert ended.finish == "stop" and ended.tokens[-1] == eos and len(ended.tokens) <= 2
    batcher.step()
    assert long.slot == 0 and long.finish is None and waiting.slot is None
    batcher.cancel(long)
    assert long.finish == "cancelled"
    while not batcher.idle:
        batcher.step()
    assert waiting.slot == 0 and waiting.tokens == _alone(model, [PROMPTS[3]], 2)[0].tolist()


def test_the_package_batches_its_prompts_as_each_runs_alone(slots_lm):
    run, alone = qc.load(slots_lm), qc.load(slots_lm)  # two loads: two caches
    assert run.metadata["lm"] == {"batch_size": 3, "max_seq_len": 64, "layers": 2, "kv_cache_dtype": "float32",
                                  "sequences": "independent"}
    got = qc.generate(run, PROMPTS, 5, eos_token_id=7)
    expected = [qc.generate(alone, p[None], 5)[0].tolist() for p in PROMPTS]
    assert [g.tolist() for g in got] == [e[:e.index(7) + 1] if 7 in e else e for e in expected]
    assert qc.generate(run, torch.stack([PROMPTS[0], PROMPTS[4][:5]]), 4).shape == (2, 4)  # rows in step, too


def test_what_cannot_run_is_refused_before_any_work(model, slots_lm):
    run = qc.load(slots_lm)
    batcher = qc.Batcher(run)
    with pytest.raises(ValueError, match="a prompt of 60 tokens and max_new_tokens=5 need 65 positions; the "
                                         "program's cache holds max_seq_len=64"):
        batcher.submit(torch.zeros(60, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="prompt must be a 1-D LongTensor of token ids"):
        batcher.submit(torch.zeros(1, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="prompt must be at least one token"):
        batcher.submit(torch.zeros(0, dtype=torch.long), 5)
    assert batcher.idle
    with pytest.raises(ValueError, match="input_ids must be at most 3 prompts"):
        qc.generate(run, torch.zeros(4, 2, dtype=torch.long), 2)
    shared = _captured(model).module()
    with pytest.raises(ValueError, match="run must be a program captured with capture_lm\\(..., slots=n\\)"):
        qc.Batcher(shared)
    with pytest.raises(ValueError, match="batch_size must be 1 \\(its default\\) with slots"):
        qc.capture_lm(model, 64, batch_size=2, slots=2)
    with pytest.raises(ValueError, match="slots must be None or an int >= 1"):
        qc.capture_lm(model, 64, slots=0)


def test_a_list_of_prompts_on_a_program_without_slots_runs_them_one_by_one(model):
    shared = _captured(model).module()
    eos = _alone(model, [PROMPTS[0]], 4)[0][2].item()
    got = qc.generate(shared, PROMPTS[:2], 4, eos_token_id=eos)
    alone = _alone(model, PROMPTS[:2], 4)
    assert got[0].tolist() == alone[0].tolist()[:3] and len(got[1]) <= 4
