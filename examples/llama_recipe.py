"""A Llama-style decoder quantized layer by layer: keep the head, int4 the MLPs, int8 the attention.

    python examples/llama_recipe.py [--small] [--out llama.pt2]

A ``qc.Recipe`` is an ordered list of rules; the first whose pattern matches a linear's
name (a glob, a regex, a module type or a predicate) picks its config, ``None`` keeps it
in float. The report says what each layer became and why any was skipped.
"""
import argparse

import torch
import torch.nn.functional as F

import qcompiler as qc


class RMSNorm(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(torch.nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate_proj, self.up_proj = torch.nn.Linear(d, hidden, bias=False), torch.nn.Linear(d, hidden, bias=False)
        self.down_proj = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(torch.nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.input_norm, self.self_attn = RMSNorm(d), Attention(d, heads)
        self.post_norm, self.mlp = RMSNorm(d), MLP(d, hidden)

    def forward(self, x):
        x = x + self.self_attn(self.input_norm(x))
        return x + self.mlp(self.post_norm(x))


class Decoder(torch.nn.Module):
    def __init__(self, vocab=1000, d=256, layers=4, heads=4, hidden=768):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList([Layer(d, heads, hidden) for _ in range(layers)])
        self.norm, self.lm_head = RMSNorm(d), torch.nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


RECIPE = qc.Recipe([
    ("lm_head", None),                                          # the head stays in float
    ("*.mlp.*", qc.Int4WeightOnlyConfig(group_size=64)),        # MLPs: int4, groups of 64
    ("*.self_attn.*", qc.Int8DynamicActivationInt8WeightConfig()),  # attention: int8 x int8
])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="a two-layer, 128-wide decoder (seconds)")
    ap.add_argument("--out", default="llama.pt2")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = (Decoder(d=128, layers=2, hidden=256) if args.small else Decoder()).eval()
    ids = torch.randint(0, 1000, (2, 16))
    seq = torch.export.Dim("seq", max=256)
    program = qc.quantize(model, (ids,), RECIPE, dynamic_shapes=({0: torch.export.Dim("batch", max=16), 1: seq},))
    print(qc.report(program))

    lowered = qc.lower(program, "cpu")
    path = qc.package(lowered, args.out)
    test = torch.randint(0, 1000, (3, 40))  # another batch and length than the example
    with torch.no_grad():
        want, got = model(test), qc.load(path)(test)
    agree = (want.argmax(-1) == got.argmax(-1)).float().mean()
    print(f"{path}: {path.stat().st_size / 1e3:.0f} kB; next-token agreement with float {agree:.1%}")


if __name__ == "__main__":
    main()
