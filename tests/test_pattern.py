"""The pattern-rewrite API, as a user writing their own pass would use it."""
import pytest
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


def test_new_nodes_are_recorded_and_carry_fake_values_with_symbolic_shapes():
    batch = torch.export.Dim("batch")
    gm = qc.capture(Net().eval(), (torch.randn(2, 16),), dynamic_shapes=({0: batch},)).module()
    x = torch.randn(5, 16)
    expected = gm(x)

    def linear(x, w, b):
        return aten.linear.default(x, w, b)

    def scaled(m, x, w, b):  # x / 2 against w * 2: the same values through new nodes
        two = m.constant("two", torch.tensor(2.0))
        return aten.linear.default(x / two, w * two, b)

    matches = rewrite(gm, linear, scaled)
    created = matches[0].created
    assert [n.op for n in created] == ["get_attr", "call_function", "call_function", "call_function"]
    assert matches[0].stored == ["two"] and created[0].target == "two"
    assert all("val" in n.meta for m in matches for n in m.created)
    out = created[-1].meta["val"]
    assert isinstance(out.shape[0], torch.SymInt) and out.shape[1] == 16  # the batch stays symbolic
    torch.testing.assert_close(gm(x), expected)


def test_where_may_reject_keep_or_hand_a_payload_to_the_replacement():
    gm = graph_module()
    x = torch.randn(2, 16)
    expected = gm(x)

    def linear(x, w, b):
        return aten.linear.default(x, w, b)

    def where(m):
        if m["b"] is None:
            return False  # rejected: proj keeps its node
        return m.value("w").detach().abs().amax()  # kept, with what the check computed

    seen = []

    def replacement(m, x, w, b):
        seen.append(float(m.payload))
        return aten.linear.default(x, w, b)

    matches = rewrite(gm, linear, replacement, where=where)
    assert [m["w"].target for m in matches] == ["fc.weight"] and seen == [float(gm.fc.weight.detach().abs().amax())]
    torch.testing.assert_close(gm(x), expected)


def test_matches_do_not_overlap():
    class Three(torch.nn.Module):
        def forward(self, x):
            return torch.relu(torch.relu(torch.relu(x)))

    gm = qc.capture(Three(), (torch.randn(4),)).module()

    def two_relus(x):
        return aten.relu.default(aten.relu.default(x))

    assert len(find(gm, two_relus)) == 1  # three relus hold one pair that does not share a node with another
    rewrite(gm, two_relus, lambda m, x: aten.relu.default(x))
    assert sum(n.target == aten.relu.default for n in gm.graph.nodes) == 2


def test_literals_must_be_equal_unless_asked_to_match_any():
    class Clamp(torch.nn.Module):
        def forward(self, x):
            return torch.clamp_min(x, 1.0)

    gm = qc.capture(Clamp(), (torch.randn(4),)).module()

    def at_zero(x):
        return aten.clamp_min.default(x, 0.0)

    assert find(gm, at_zero) == []
    (m,) = find(gm, at_zero, literals="any")
    assert m.anchor.args[1] == 1.0  # where= may read the literal the graph holds
    with pytest.raises(ValueError, match="literals must be 'equal' or 'any'; got 'some'"):
        find(gm, at_zero, literals="some")


def test_a_replacement_that_returns_no_graph_value_is_refused_naming_the_node():
    gm = graph_module()

    def linear(x, w, b):
        return aten.linear.default(x, w, b)

    with pytest.raises(TypeError, match=r"a replacement must return a graph value \(a Proxy or Node\); got Tensor "
                                        r"replacing linear"):
        rewrite(gm, linear, lambda m, x, w, b: torch.zeros(2))
