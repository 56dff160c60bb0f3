"""The pattern-rewrite API, as a user writing their own pass would use it."""
import torch
import torch.nn.functional as F

import qcompiler as qc
from qcompiler.passes import find, rewrite

aten = torch.ops.aten


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.proj = torch.nn.Linear(16, 16, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x))) + F.relu(x)


def graph_module():
    return qc.capture(Net().eval(), (torch.randn(2, 16),)).module()


def test_a_user_pass_replaces_a_pattern_and_keeps_metadata():
    gm = graph_module()
    x = torch.randn(2, 16)
    expected = gm(x)
    relu = next(n for n in gm.graph.nodes if n.target == aten.relu.default and n.args[0].target == aten.linear.default)
    stack, trace = relu.meta["nn_module_stack"], relu.meta["stack_trace"]

    def pattern(x, w, b):
        return aten.relu.default(aten.linear.default(x, w, b))

    def replacement(m, x, w, b):  # relu(linear) -> clamp_min(linear): same values, new nodes
        return aten.clamp_min.default(aten.linear.default(x, w, b), 0.0)

    matches = rewrite(gm, pattern, replacement)
    assert len(matches) == 1 and matches[0]["w"].target == "fc.weight"
    torch.testing.assert_close(gm(x), expected)
    clamp = next(n for n in gm.graph.nodes if n.target == aten.clamp_min.default)
    assert clamp.meta["nn_module_stack"] == stack and clamp.meta["stack_trace"] == trace  # from the matched output
    assert not any(n.target == aten.relu.default and n.args[0].target == aten.linear.default for n in gm.graph.nodes)


def test_absent_optional_arguments_arrive_as_none_and_where_filters():
    gm = graph_module()

    def linear(x, w, b):
        return aten.linear.default(x, w, b)

    assert [m["b"] for m in find(gm, linear)][1] is None  # proj has no bias
    only_biasless = find(gm, linear, where=lambda m: m["b"] is None)
    assert [m["w"].target for m in only_biasless] == ["proj.weight"]


def test_replacements_may_add_constants():
    gm = graph_module()
    x = torch.randn(2, 16)
    expected = gm(x) * 1  # before

    def linear(x, w, b):
        return aten.linear.default(x, w, b)

    def halve_then_double(m, x, w, b):
        half = m.constant("half", torch.tensor(0.5))
        return aten.linear.default(x, w, b) * half * 2

    rewrite(gm, linear, halve_then_double)
    assert hasattr(gm, "half") and hasattr(gm, "half_1")
    torch.testing.assert_close(gm(x), expected)


def test_chained_matches_read_the_replaced_nodes():
    class Chain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(self.fc(x)))

    model = Chain().eval()
    gm = qc.capture(model, (torch.randn(2, 8),)).module()

    def linear(x, w, b):
        return aten.linear.default(x, w, b)

    assert len(rewrite(gm, linear, lambda m, x, w, b: aten.linear.default(x, w, b) + 0)) == 3
    x = torch.randn(2, 8)
    torch.testing.assert_close(gm(x), model(x))
