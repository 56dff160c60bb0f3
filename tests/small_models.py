"""Tiny models for the front-end tests (fast to export; real models are in test_real_models.py and qcompiler.zoo)."""
import torch
import torch.nn.functional as F
from torch.export import Dim


class Block(torch.nn.Module):
    def __init__(self, d=64):
        super().__init__()
        self.fc1 = torch.nn.Linear(d, 2 * d)
        self.fc2 = torch.nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Mixed(torch.nn.Module):
    """Embedding, conv, nested blocks, a shared module called twice, a tied head, a run-time weight, K=48.

    Linears: blocks.0.fc1, blocks.0.fc2, blocks.1.fc1, blocks.1.fc2, shared (twice), odd (K=48),
    head (weight tied to embed.weight), plus F.linear(x, runtime_w * 2) (weight computed at run time).
    """

    def __init__(self, vocab=96, d=64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.conv = torch.nn.Conv1d(d, d, 3, padding=1)
        self.blocks = torch.nn.ModuleList([Block(d), Block(d)])
        self.shared = torch.nn.Linear(d, d)
        self.odd = torch.nn.Linear(48, d)
        self.runtime_w = torch.nn.Parameter(torch.randn(d, d) * 0.05)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        for b in self.blocks:
            x = x + b(x)
        x = self.shared(self.shared(x))
        x = x + self.odd(x[..., :48]) + F.linear(x, self.runtime_w * 2)
        return self.head(x)


def mixed_case(batch=2, seq=8):
    torch.manual_seed(0)
    model = Mixed().eval()
    ids = torch.randint(0, 96, (batch, seq))
    return model, (ids,), ({0: Dim("batch", max=64), 1: Dim("seq", max=512)},)


def mlp_case(batch=4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(Block(64), torch.nn.ReLU(), torch.nn.Linear(64, 32)).eval()
    return model, (torch.randn(batch, 64),), ({0: Dim("batch", max=1024)},)


def mixed_factory():
    """``qcompiler quantize small_models:mixed_factory``: (model, example inputs)."""
    model, args, _ = mixed_case()
    return model, args


def mlp_factory():
    model, args, _ = mlp_case()
    return model, args


def square_mlp_factory():
    """Three 64 -> 64 linears with bias: one shape, so autoquant packages each candidate once (a fast CLI test)."""
    torch.manual_seed(0)
    lin = [torch.nn.Linear(64, 64) for _ in range(3)]
    model = torch.nn.Sequential(lin[0], torch.nn.ReLU(), lin[1], torch.nn.ReLU(), lin[2]).eval()
    return model, (torch.randn(4, 64),)
