"""One cached Predictor used by several sessions at once (the app's sessions are threads of one process).

A real model with dropout (the shipped baseline's weights, its timm head given dropout 0.5) is called from
two threads at a time: Monte-Carlo dropout beside a plain prediction (single-pass CAMs, test-time
augmentation), Monte-Carlo dropout beside per-label Grad-CAM, a plain prediction beside Grad-CAM, and two
Monte-Carlo runs with different seeds. Every result must be bitwise the single-threaded result of the same
call, and the shared model must be left as it was: eval mode, no hooks, no gradients, the same
``requires_grad``, the global random generator untouched.

The overlap is made, not hoped for: identity modules placed in the model (``Rendezvous``) wait on a
``threading.Barrier`` where a thread's plan says so (by place in the network and by how many times the
thread has passed there in this call), so the partner's forward pass provably runs inside the other
call's window: e.g. while Monte-Carlo dropout is between its first and its last pass, or between
pytorch-grad-cam attaching its hooks and its own pass reaching the hooked layer. No sleeps.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FORMATS
from cxrcore.checkpoint import read_card, save_checkpoint
from cxrcore.data.imageio import read_image
from cxrcore.predictor import Predictor

ROUNDS = 3
_local = threading.local()


def _sync(point: str) -> None:
    """Wait on this thread's barrier if its plan says so for this passage through ``point``."""
    plan = getattr(_local, "plan", None)
    if plan is None:  # single-threaded reference runs: a plain identity
        return
    k = _local.seen.get(point, 0)
    _local.seen[point] = k + 1
    if k in plan.get(point, ()):
        _local.barrier.wait()


class Rendezvous(nn.Module):
    """Identity; a synchronisation point for the test's threads (no parameters, no state)."""

    def __init__(self, point: str):
        super().__init__()
        self.point = point

    def forward(self, x):
        _sync(self.point)
        return x


@pytest.fixture(scope="module")
def images():
    return [read_image(FORMATS / "00000001_000.png"), read_image(FORMATS / "00027426_000.png")]


@pytest.fixture(scope="module")
def predictor(shipped, tmp_path_factory):
    """The shipped baseline with dropout 0.5 in its classifier head (timm's ``drop_rate``; dropout has no
    weights, so the trained weights load as they are), and the test's rendezvous points: two before the
    stem ("in", "in2"), one on each side of the head's dropout ("pre", "post")."""
    folder = tmp_path_factory.mktemp("threads") / "dropout"
    card = read_card(shipped["baseline"])
    card.model = dict(card.model, kwargs={**(card.model.get("kwargs") or {}), "drop_rate": 0.5})
    save_checkpoint(folder, Predictor(shipped["baseline"]).model.state_dict(), card)
    p = Predictor(folder)
    model = p.model
    assert isinstance(model.head.drop, nn.Dropout) and model.head.drop.p == 0.5
    model.stem = nn.Sequential(Rendezvous("in"), Rendezvous("in2"), model.stem)
    model.head.drop = nn.Sequential(Rendezvous("pre"), model.head.drop, Rendezvous("post"))
    model.eval()  # the inserted modules too, as Predictor leaves its model
    assert p.fast_cam  # predict(heatmaps=True) takes the single-pass path (forward_with_cams)
    return p


def _calls(p: Predictor, images) -> dict:
    """The calls the threads make, by name: (function, plan for the first overlap kind it takes part in)."""
    a, b = images
    return {
        # Monte-Carlo dropout: pass 0 through the head is the deterministic prediction, passes 1.. the samples
        "mc1": lambda: p.predict(a, heatmaps=False, mc_samples=6, mc_seed=1),
        "mc2": lambda: p.predict(b, heatmaps=False, mc_samples=6, mc_seed=2, mc_tta=True),
        # single-pass CAMs (head passage 0) then test-time augmentation (passages 1 and 2)
        "plain_tta": lambda: p.predict(b, heatmaps=True, tta="flip"),
        "plain": lambda: p.predict(a, heatmaps=False),
        # pytorch-grad-cam per label: logits (passage 0), features, then one hooked pass per label
        "gradcam": lambda: p.heatmaps_for(b, p.labels[:2], "GradCAM"),
    }


# Each phase: two calls at once and where each waits. Barrier waits pair up in order.
PHASES = {
    # the plain call's head dropout runs while Monte-Carlo dropout is between its passes 1 and 2
    "mc_vs_plain": (("mc1", {"pre": {1, 2}, "post": {1, 2}}), ("plain_tta", {"pre": {0, 1}, "post": {0, 1}})),
    # Grad-CAM's first hooked pass runs while Monte-Carlo dropout is in its first sample
    "mc_vs_gradcam": (("mc1", {"pre": {1}, "post": {1}}), ("gradcam", {"pre": {1}, "post": {1}})),
    # the plain call passes the Grad-CAM layer after pytorch-grad-cam attached its hooks and cleared its
    # lists, before Grad-CAM's own pass reaches that layer
    "plain_vs_gradcam": (("plain", {"in": {0}, "pre": {0}}), ("gradcam", {"in": {2}, "in2": {2}})),
    # two Monte-Carlo runs, different seeds, drawing their masks at the same time
    "mc_vs_mc": (("mc1", {"pre": {1, 2}, "post": {1, 2}}), ("mc2", {"pre": {1, 2}, "post": {1, 2}})),
}


def _same(got, want) -> bool:
    if isinstance(want, list):  # heatmaps_for: [(heatmap, boxes)]
        return len(got) == len(want) and all(np.array_equal(g[0], w[0]) and g[1] == w[1] for g, w in zip(got, want))
    fields = ("probs", "heatmaps", "boxes", "calibrated", "prob_mean", "prob_var", "prob_std")
    for f in fields:
        g, w = getattr(got, f), getattr(want, f)
        if isinstance(w, np.ndarray) or isinstance(g, np.ndarray):
            if g is None or w is None or not np.array_equal(g, w):
                return False
        elif g != w:
            return False
    return True


def _run_pair(calls: dict, phase) -> tuple[dict, list]:
    barrier = threading.Barrier(2, timeout=120)
    results: dict[str, list] = {name: [] for name, _ in phase}
    errors: list = []

    def worker(name, plan):
        try:
            for _ in range(ROUNDS):
                _local.plan, _local.seen, _local.barrier = plan, {}, barrier
                try:
                    results[name].append(calls[name]())
                finally:
                    _local.plan = None
                barrier.wait()  # next round starts together
        except BaseException as exc:  # noqa: BLE001 - reported by the test; the partner must not hang
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(name, plan), name=f"session-{name}") for name, plan in phase]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return results, errors


def test_concurrent_calls_equal_single_threaded_and_leave_the_model_untouched(predictor, images):
    model = predictor.model
    calls = _calls(predictor, images)
    want = {name: call() for name, call in calls.items()}  # single-threaded, no waits
    assert want["mc1"].prob_var.max() > 0  # the model's own dropout is what Monte-Carlo samples
    grad_flags = [q.requires_grad for q in model.parameters()]
    rng = torch.get_rng_state()

    failures = []
    for phase_name, phase in PHASES.items():
        results, errors = _run_pair(calls, phase)
        failures += [f"{phase_name}: {e}" for e in errors]
        for name, got in results.items():
            bad = [i for i, r in enumerate(got) if not _same(r, want[name])]
            if bad or len(got) != ROUNDS:
                failures.append(f"{phase_name}: {name} differs from its single-threaded result in rounds {bad} "
                                f"of {len(got)}")
    assert not failures, "\n".join(failures)

    # the shared model is as it was
    assert not any(m.training for m in model.modules()), "a module was left in training mode"
    hooked = [n for n, m in model.named_modules()
              if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks]
    assert not hooked, f"hooks left on {hooked}"
    assert all(q.grad is None for q in model.parameters()), "gradients left on the shared weights"
    assert [q.requires_grad for q in model.parameters()] == grad_flags
    assert torch.equal(torch.get_rng_state(), rng), "the global random generator was disturbed"
    assert isinstance(model.head.drop[1], nn.Dropout) and model.head.drop[1].p == 0.5


def test_a_call_on_its_own_leaves_no_trace(predictor, images):
    """Single-threaded too: no gradients, hooks, mode or generator change is left behind by any entry point."""
    model = predictor.model
    rng = torch.get_rng_state()
    for call in _calls(predictor, images).values():
        call()
    predictor.with_uncertainty(predictor.predict(images[0], heatmaps=False), images[0], 3)
    assert all(q.grad is None for q in model.parameters())
    assert not any(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("kind,shape", [(nn.Dropout, (5, 368)), (nn.Dropout, (2, 8, 6, 6)), (nn.Dropout1d, (4, 8, 10)),
                                        (nn.Dropout1d, (8, 10)), (nn.Dropout2d, (2, 8, 5, 5)),
                                        (nn.Dropout3d, (2, 4, 3, 3, 3)), (nn.Dropout3d, (4, 3, 3, 3)),
                                        (nn.AlphaDropout, (3, 50))])
def test_seeded_dropout_is_the_layer_in_training_mode_bitwise(kind, shape):
    """Monte-Carlo dropout's masks come from the call's own generator, with the layer's own arithmetic: on the
    CPU the numbers are those of the layer in training mode after torch.manual_seed (today's results kept)."""
    from cxrcore.explain.uncertainty import seeded_dropout

    x = torch.randn(*shape)
    layer = kind(0.3).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        want = [layer(x), layer(x)]
    gen = torch.Generator().manual_seed(7)
    got = [seeded_dropout(x, 0.3, gen, kind), seeded_dropout(x, 0.3, gen, kind)]
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    if kind is nn.Dropout and len(shape) == 4:  # channels-last input: same draws
        cl = x.to(memory_format=torch.channels_last)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            want = layer(cl)
        assert torch.equal(seeded_dropout(cl, 0.3, torch.Generator().manual_seed(7), kind), want)
