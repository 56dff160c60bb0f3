"""Decoder LLMs: captured with their KV cache, quantized, packaged, generated from."""
import gc
import os
import weakref

import pytest
import torch

import qcompiler as qc
from qcompiler.zoo import decoder

pytest.importorskip("transformers")

MAX_SEQ_LEN = 48
STEPS = 16
# each family lowered with another scheme and run against its quantized reference; one packaged (packaging costs
# ~30 s a model): Gemma (its lm_head reads the embedding table) with int8 embedding rows by recipe and an int8 cache
INT8_ROWS = qc.Recipe([(torch.nn.Embedding, qc.Int8WeightOnlyConfig()),
                       ("*", qc.config_from_string("int8da-int4w-32"))])
FAMILIES = [("llama-tiny", "int4wo-32", None, False), ("qwen2-tiny", "int8dq", None, False),
            ("mistral-tiny", "int8wo", torch.int8, False), ("phi3-tiny", "codebook-4", None, False),
            ("gemma-tiny", INT8_ROWS, torch.int8, True)]


def prompt(length, seed=1):
    return torch.randint(3, 256, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def llama():
    model = decoder("llama-tiny")
    return model, qc.capture_lm(model, max_seq_len=MAX_SEQ_LEN)


def test_captured_program_generates_what_transformers_generates(llama):
    model, lm = llama
    ids = prompt(7)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS, do_sample=False)
    assert torch.equal(qc.generate(lm.module(), ids, STEPS), expected[:, ids.shape[1]:])


@pytest.mark.parametrize("family,scheme,kv_cache_dtype,packaged", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_lowered_decoder_matches_its_quantized_reference(family, scheme, kv_cache_dtype, packaged, tmp_path):
    lm = qc.capture_lm(decoder(family), max_seq_len=MAX_SEQ_LEN, kv_cache_dtype=kv_cache_dtype)
    config = scheme if isinstance(scheme, qc.Recipe) else qc.config_from_string(scheme)
    program = qc.convert(qc.prepare(lm, config))
    assert sequence_range(program) == (1, MAX_SEQ_LEN)  # every stage keeps the range captured
    lowered = qc.lower(program, "cpu")
    assert sequence_range(lowered) == (1, MAX_SEQ_LEN)
    runs = [lowered.module()]
    if packaged:
        path = qc.package(lowered, tmp_path / "lm.pt2")
        run, plain = qc.load(path), torch._inductor.aoti_load_package(str(path))  # plain: torch alone
        cache = str(kv_cache_dtype or torch.float32).removeprefix("torch.")
        assert run.metadata["lm"] == {"batch_size": 1, "max_seq_len": MAX_SEQ_LEN, "layers": 2,
                                      "kv_cache_dtype": cache, "sequences": "shared"}
        with pytest.raises(ValueError, match="max_seq_len=48"):  # plain AOTInductor packages tell it too
            qc.generate(plain, prompt(40), 9)
        runs = [run, plain]
    reference = program.module()
    for length in (5, 11):  # the prompt length is dynamic; the cache starts again with each prompt
        ids = prompt(length, seed=length)
        expected = qc.generate(reference, ids, STEPS)
        for run in runs:
            assert torch.equal(qc.generate(run, ids, STEPS), expected)
        positions = torch.arange(length)
        ours, ref = runs[0](input_ids=ids, cache_position=positions), reference(input_ids=ids, cache_position=positions)
        assert ours.shape == (1, length, 256)
        torch.testing.assert_close(ours, ref, atol=2e-2 * ref.abs().max().item(), rtol=0)


def sequence_range(program) -> tuple:
    """The range of the program's sequence length (``cache_position``'s size)."""
    name = program.graph_signature.user_inputs[1]
    size = next(n.meta["val"].shape[0] for n in program.graph.nodes if n.name == name)
    bounds = program.range_constraints[size.node.expr]
    return int(bounds.lower), int(bounds.upper)


def test_embedding_rows_by_recipe(llama):
    _, lm = llama
    recipe = qc.Recipe([("*embed_tokens", qc.Int8WeightOnlyConfig()), ("*lm_head", None),
                        (torch.nn.Linear, qc.Int4WeightOnlyConfig(32))])
    program = qc.convert(qc.prepare(lm, recipe))
    rows = {r.name: r for r in qc.report(program).layers}
    table = rows["model.model.embed_tokens"]
    assert (table.scheme, table.bytes_before, table.bytes_after) == ("int8wo", 256 * 64 * 4, 256 * 64 + 256 * 4)
    tables = {k: v.dtype for k, v in program.state_dict.items() if "embed_tokens" in k}
    assert sorted(tables.values(), key=str) == [torch.float32, torch.int8]  # int8 rows and their scales, no float table
    ids = prompt(9)
    positions = torch.arange(9)
    ours, ref = program.module()(input_ids=ids, cache_position=positions), lm.module()(input_ids=ids,
                                                                                     cache_position=positions)
    torch.testing.assert_close(ours, ref, atol=0.2 * ref.abs().max().item(), rtol=0)


def test_embeddings_only_where_a_recipe_names_them(llama):
    _, lm = llama
    names = {r.name for r in qc.report(qc.convert(qc.prepare(lm, qc.Int8WeightOnlyConfig()))).layers}
    assert "model.model.embed_tokens" not in names  # a plain config means the linears
    recipe = qc.Recipe([("*embed_tokens", qc.config_from_string("int8dq")), ("*", qc.Int8WeightOnlyConfig())])
    report = qc.report(qc.convert(qc.prepare(lm, recipe)))
    skipped = {r.name: r.skipped for r in report.layers if r.skipped}
    assert "weight-only" in skipped["model.model.embed_tokens"]


def test_convert_lets_the_float_weights_go():
    model = decoder("llama-tiny")
    weights = [weakref.ref(p) for p in model.parameters() if p.ndim == 2]
    lm = qc.capture_lm(model, max_seq_len=MAX_SEQ_LEN)
    prepared = qc.prepare(lm, qc.Int4WeightOnlyConfig(32))
    del model, lm  # they hold the same weights as the prepared module
    program = qc.convert(prepared)
    del prepared
    gc.collect()
    alive = [w() for w in weights if w() is not None]
    assert [tuple(t.shape) for t in alive] == [(256, 64)]  # the embedding table alone: no recipe named it
    assert qc.generate(program.module(), prompt(5), 4).shape == (1, 4)


def test_the_cache_starts_again_with_each_prompt(llama):
    _, lm = llama
    run = lm.module()
    first, second = prompt(9, seed=2), prompt(6, seed=3)
    alone = qc.generate(lm.module(), second, 8)
    qc.generate(run, first, 20)  # fills the cache further than the second prompt reaches
    assert torch.equal(qc.generate(run, second, 8), alone)


def test_streamed_tokens_are_the_generated_ones(llama):
    _, lm = llama
    ids = prompt(5)
    streamed = [t for t in qc.stream(lm.module(), ids, 6)]
    assert [t.shape for t in streamed] == [(1,)] * 6
    assert torch.equal(torch.stack(streamed, 1), qc.generate(lm.module(), ids, 6))


def test_sampling_options(llama):
    _, lm = llama
    ids = prompt(5)
    greedy = qc.generate(lm.module(), ids, 8)
    assert torch.equal(qc.generate(lm.module(), ids, 8, temperature=0.7, top_k=1), greedy)
    runs = [qc.generate(lm.module(), ids, 8, temperature=5.0, generator=torch.Generator().manual_seed(0))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], greedy)
    first = greedy[0, 0].item()
    assert qc.generate(lm.module(), ids, 8, eos_token_id=first).shape == (1, 1)


@pytest.mark.parametrize("kwargs,message", [
    ({"input_ids": prompt(40), "max_new_tokens": 9}, r"49 positions; the program's cache holds max_seq_len=48"),
    ({"input_ids": prompt(49), "max_new_tokens": 0}, r"max_seq_len=48"),
    ({"input_ids": torch.randint(3, 256, (2, 4))}, r"input_ids must be a batch of 1 prompts"),
    ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, r"at least one token"),
    ({"input_ids": torch.zeros(4, dtype=torch.long)}, r"LongTensor \[batch, prompt length\]"),
    ({"input_ids": prompt(4), "max_new_tokens": -1}, r"max_new_tokens must be an int >= 0"),
    ({"input_ids": prompt(4), "temperature": -1.0}, r"temperature must be a number >= 0"),
    ({"input_ids": prompt(4), "top_k": 0}, r"top_k must be None or an int >= 1"),
    ({"input_ids": prompt(4), "max_seq_len": 64}, r"max_seq_len must be 48"),
])
def test_bad_requests_are_clear_errors(llama, kwargs, message):
    _, lm = llama
    with pytest.raises(ValueError, match=message):
        qc.generate(lm.module(), **{"max_new_tokens": 4, **kwargs})


def test_capture_lm_rejects_what_it_cannot_capture():
    with pytest.raises(ValueError, match="model must be a transformers decoder-only causal LM"):
        qc.capture_lm(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="max_seq_len must be an int >= 2"):
        qc.capture_lm(decoder("llama-tiny"), max_seq_len=1)
    with pytest.raises(ValueError, match="decoder must be one of llama-tiny"):
        decoder("gpt-17")


def test_capture_lm_leaves_the_models_generation_config_alone():
    model = decoder("llama-tiny")
    before = model.generation_config.to_dict()
    qc.capture_lm(model, max_seq_len=16, batch_size=2)
    assert model.generation_config.to_dict() == before


def test_int8_kv_cache_stores_int8_with_a_scale_per_token_and_head(llama):
    model, lm = llama
    int8 = qc.capture_lm(model, max_seq_len=MAX_SEQ_LEN, kv_cache_dtype=torch.int8)
    buffers = dict(int8.named_buffers())
    assert buffers["key_cache_0"].dtype == torch.int8 and buffers["key_cache_0"].shape == (1, 2, MAX_SEQ_LEN, 16)
    assert buffers["key_scale_0"].shape == (1, 2, MAX_SEQ_LEN, 1)
    ids, positions = prompt(12), torch.arange(12)
    ref = lm.module()(input_ids=ids, cache_position=positions)
    ours = int8.module()(input_ids=ids, cache_position=positions)
    torch.testing.assert_close(ours, ref, atol=1e-2 * ref.abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be None \(the model's dtype\), torch.int8 or "
                                         r"torch.bfloat16; got torch.float16"):
        qc.capture_lm(model, max_seq_len=16, kv_cache_dtype=torch.float16)


def test_bf16_kv_cache_stores_bfloat16_and_attention_reads_it_without_a_cast_where_the_rest_runs_in_bf16(llama):
    """kv_cache_dtype=torch.bfloat16: half a float32 model's cache, the same tokens within bf16 rounding; attention
    (qcompiler.cache_attention) takes the stored bfloat16 cache itself (no widening to float32 and back)."""
    model, lm = llama
    bf16 = qc.capture_lm(model, max_seq_len=MAX_SEQ_LEN, kv_cache_dtype=torch.bfloat16)
    buffers = dict(bf16.named_buffers())
    assert buffers["key_cache_0"].dtype == torch.bfloat16 and buffers["key_cache_0"].shape == (1, 2, MAX_SEQ_LEN, 16)
    ids, positions = prompt(12), torch.arange(12)
    ref = lm.module()(input_ids=ids, cache_position=positions)
    ours = bf16.module()(input_ids=ids, cache_position=positions)
    torch.testing.assert_close(ours, ref, atol=1e-2 * ref.abs().max().item(), rtol=0)
    target = qc.Target.parse("cpu:avx2+avx512+vnni+avx512_bf16")
    low = qc.lower(qc.convert(qc.prepare(bf16, qc.config_from_string("int8dq"))), target,
                   unquantized_dtype=torch.bfloat16)
    attention = [n for n in low.graph.nodes if n.target == torch.ops.qcompiler.cache_attention.default]
    keys_values = [a for n in attention for a in n.args[1:3]]
    assert attention and all(a.meta["val"].dtype == torch.bfloat16 for a in keys_values)
    # the stored cache itself (its index_copy), not a widening to float32 and a cast back every step
    assert all(a.target == torch.ops.aten.index_copy.default for a in keys_values), [a.target for a in keys_values]


def _sdpa_cases():
    gen = torch.Generator().manual_seed(0)
    key, value = torch.randn(2, 2, 10, 16, generator=gen), torch.randn(2, 2, 10, 16, generator=gen)
    for length in (1, 5):
        query = torch.randn(2, 8, length, 16, generator=gen)
        causal = torch.arange(10)[None, :] <= torch.arange(10 - length, 10)[:, None]  # [length, 10]
        masks = {"none": None, "bool": causal[None, None].expand(2, 1, length, 10),
                 "float": torch.zeros(1, 1, length, 10).masked_fill(~causal, float("-inf")),
                 "one row": causal[-1:][None, None]}
        for name, mask in masks.items():
            yield f"L={length} mask={name}", query, key, value, mask


class _Layer(torch.nn.Module):
    num_key_value_groups = 2


@pytest.mark.parametrize("case", list(_sdpa_cases()), ids=lambda c: c[0])
def test_grouped_rows_attend_as_grouped_query_attention(case, monkeypatch):
    from qcompiler.llm.gqa_attention import grouped_rows_attention

    _, query, key, value, mask = case
    sdpa = torch.nn.functional.scaled_dot_product_attention
    expected = sdpa(query, key, value, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *args, **kwargs: calls.append(q.shape) or sdpa(q, *args, **kwargs))
    out, weights = grouped_rows_attention(_Layer(), query, key, value, mask)
    torch.testing.assert_close(out, expected)
    assert weights is None and calls == [(2, 2, 4 * query.shape[2], 16)]  # the kv heads, their query heads as rows


def test_grouped_rows_leave_other_attention_alone(monkeypatch):
    from transformers.integrations import sdpa_attention

    from qcompiler.llm.gqa_attention import grouped_rows_attention

    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    calls = []
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda module, q, *args, **kwargs: calls.append(q.shape) or (q, None))
    grouped_rows_attention(_Layer(), q, k, k, None, is_causal=True)  # causal: as it is
    grouped_rows_attention(_Layer(), q, k, k, torch.zeros(1, 4, 3, 3))  # a mask per head
    grouped_rows_attention(_Layer(), q, k, k, None, dropout=0.1)  # dropout
    grouped_rows_attention(_Layer(), q, q, q, None)  # no grouped-query attention
    assert calls == [(1, 4, 3, 8)] * 4


def test_capture_lm_attends_with_the_kv_heads_and_changes_nothing_process_wide(llama):
    """On the CPU attention is qcompiler.cache_attention over the kv heads (each one's query heads as its rows), and
    nothing is SDPA."""
    model, lm = llama
    attention = [n for n in lm.graph.nodes if n.target == torch.ops.qcompiler.cache_attention.default]
    heads = {n.args[0].meta["val"].shape[1] for n in attention}
    assert heads == {model.config.num_key_value_heads}  # llama-tiny: 2 query heads per kv head, as rows
    assert {n.args[6] for n in attention} == {model.config.num_attention_heads // model.config.num_key_value_heads}
    assert len(attention) == model.config.num_hidden_layers
    assert not [n for n in lm.graph.nodes if "scaled_dot_product" in str(n.target)]
    assert model.config._attn_implementation == "sdpa"  # the model's own choice, restored
    assert torch.nn.functional.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ


def test_building_a_decoder_leaves_the_callers_random_state_alone():
    """zoo.decoder seeds its own weights (the same model for the same seed) inside a forked random state."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = decoder("llama-tiny", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = decoder("llama-tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
