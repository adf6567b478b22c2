"""torch.compile of a whole training step (forward, loss, backward) of the tiny Med-URWKV models, fullgraph.

Backend: AOTAutograd with no-op compilers (what ``backend="aot_eager"`` is), recording the graphs. AOTAutograd is
the part that matters for the custom ops: it traces the forward and the backward graph through the fake
implementations and the registered autograd formulas, so ``medurwkv::bi_wkv_backward`` and
``medurwkv::ms_deform_attn_backward`` must appear as nodes of the backward graph. Inductor's code generation is
left out on purpose: it compiles C++ for every graph, minutes on a 2-core CI machine, and tests Inductor rather
than this project. ``fullgraph=True`` turns any graph break into an error.

The comparison with eager runs in float64 with stochastic depth off: the tiny models' float32 gradients differ
from their float64 values by up to ~50% in some near-zero tensors (eager against eager), which would hide a real
difference, and the compiled graph draws random numbers differently from eager. In float64 compiled and eager
agree to ~1e-13.
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

from medurwkv.models import QUICK_OVERRIDES, create_model

_SMALL_DECODER = dict(decoder_dim=32, decoder_depths=[1, 1, 1], bottleneck_depth=1)
# per model: the custom ops that must be single nodes of the forward graph (the backward op alongside each)
OPS = {
    "med_urwkv_t": ("bi_wkv", "ms_deform_attn"),
    "med_urwkv_t_pure": ("bi_wkv",),
}


def _count(graphs: list[torch.fx.GraphModule], name: str) -> int:
    target = getattr(torch.ops.medurwkv, name).default
    return sum(n.target is target for g in graphs for n in g.graph.nodes)


def _step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name", list(OPS))
def test_compiled_training_step_has_no_graph_break_and_matches_eager(name):
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = {**QUICK_OVERRIDES[name], **_SMALL_DECODER}
    cfg["encoder_overrides"] = {**cfg["encoder_overrides"], "drop_path_rate": 0.0}
    eager = create_model(name, num_classes=3, **cfg).double()
    model = copy.deepcopy(eager)  # same weights and BatchNorm state: both take one training step from here
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 64, 64), generator=g)

    graphs: dict[str, list[torch.fx.GraphModule]] = {"forward": [], "backward": []}

    def recorder(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    loss = _step(compiled, x, target)
    ref = _step(eager, x, target)

    # one graph each way (fullgraph would have raised on a break), every operator call one custom-op node
    assert len(graphs["forward"]) == 1 and len(graphs["backward"]) == 1
    for op in OPS[name]:
        n = _count(graphs["forward"], op)
        assert n >= 1, op
        assert _count(graphs["backward"], f"{op}_backward") == n, op
    assert _count(graphs["forward"], "bi_wkv") == sum(
        1 for m in eager.modules() if type(m).__name__ == "SpatialMix"
    )

    assert torch.allclose(loss, ref, rtol=1e-10, atol=0), (loss.item(), ref.item())
    # relative per tensor; tensors whose gradient is a million times below the largest one (biases in front of
    # a BatchNorm, whose true gradient is 0) are measured against that floor instead of their own rounding noise
    floor = 1e-6 * max(q.grad.abs().max().item() for q in eager.parameters() if q.grad is not None)
    worst = 0.0
    for (pname, p), q in zip(model.named_parameters(), eager.parameters()):
        assert (p.grad is None) == (q.grad is None), pname
        if q.grad is not None:
            worst = max(worst, ((p.grad - q.grad).abs().max() / max(q.grad.abs().max().item(), floor)).item())
    assert worst < 1e-8, worst
    assert any(q.grad.abs().max() > 0 for q in eager.parameters() if q.grad is not None)
    print(
        f"{name}: compiled + eager step in {time.perf_counter() - t0:.1f} s, worst relative grad diff {worst:.1e}"
    )
