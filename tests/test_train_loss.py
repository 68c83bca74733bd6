"""The QuerySD loss, centring, resampling on common regions, heads, EMA and schedules."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uniap_train.config import ModelConfig  # noqa: E402
from uniap_train.crops import Crop  # noqa: E402
from uniap_train.loss import (  # noqa: E402
    QuerySDLoss,
    build_region_pairs,
    sample_maps,
    sinkhorn_knopp,
    view_entropy,
)
from uniap_train.model import DINOHead, QueryHead, ema_update, pixel_logits, query_attention  # noqa: E402
from uniap_train.utils import (  # noqa: E402
    atomic_torch_save,
    cancel_gradients_last_layer,
    clip_gradients,
    cosine_scheduler,
    get_params_groups,
    get_rng_state,
    linear_warmup_then_constant,
    set_rng_state,
)


def test_teacher_equal_student_gives_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    loss = QuerySDLoss(7, student_temp=0.1)
    value = loss(logits, logits, teacher_temp=0.1)
    p = torch.softmax(logits / 0.1, -1)
    entropy = -(p * torch.log(p)).sum(-1).mean(-1).sum() / 3
    torch.testing.assert_close(value, entropy)


def test_sharper_teacher_and_centring():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    loss = QuerySDLoss(3, student_temp=1.0)
    # a one-hot (very sharp) teacher: CE = -log softmax(student)[0]
    ce = loss(logits, logits, teacher_temp=1e-3)
    torch.testing.assert_close(ce, -torch.log_softmax(logits, -1)[0, 0, 0])
    # the centre is subtracted from the teacher logits before sharpening
    loss.center.copy_(torch.tensor([[4.0, 0.0, 0.0]]))
    shifted = loss(logits, logits, teacher_temp=1e-3)
    torch.testing.assert_close(shifted, -torch.log_softmax(logits, -1)[0, 0, 1:].mean())


def test_center_ema():
    loss = QuerySDLoss(2, center_momentum=0.9)
    teacher = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]])  # mean (2, 4)
    loss.update_center(teacher)
    torch.testing.assert_close(loss.center, torch.tensor([[0.2, 0.4]]))
    loss.update_center(teacher)
    torch.testing.assert_close(loss.center, torch.tensor([[0.38, 0.76]]))
    loss.update_center(teacher[:, :0])  # no points: unchanged
    torch.testing.assert_close(loss.center, torch.tensor([[0.38, 0.76]]))


def test_global_pair_count_scaling():
    torch.manual_seed(1)
    s, t = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    loss = QuerySDLoss(5)
    full = loss(s, t, 0.07)
    halves = [loss(s[i:i + 2], t[i:i + 2], 0.07, num_pairs_global=4, world_size=2) for i in (0, 2)]
    torch.testing.assert_close(sum(halves) / 2, full)  # DDP averages the two processes


def test_sample_maps_at_cell_centres_and_flips():
    b, k, h, w = 2, 3, 4, 4
    maps = [torch.arange(b * k * h * w, dtype=torch.float32).reshape(b, k, h, w)]
    crops = [[Crop((0, 0, 40, 40), False, 4), Crop((0, 0, 40, 40), True, 4)] for _ in range(b)]
    pairs = build_region_pairs(crops, num_global=1, region_size=4)
    assert len(pairs) == b  # (view 0, view 1) per sample
    teacher = sample_maps(maps, pairs.teacher, pairs.teacher_grid, b)  # (P, 16, K)
    expected = maps[0].flatten(2).transpose(1, 2)  # cell centres: exact values
    torch.testing.assert_close(teacher, expected)
    student = sample_maps([maps[0], maps[0]], pairs.student, pairs.student_grid, b)
    torch.testing.assert_close(student, maps[0].flip(-1).flatten(2).transpose(1, 2))


def test_region_pairs_skip_disjoint_views():
    crops = [[Crop((0, 0, 10, 10), False, 8), Crop((0, 0, 10, 10), False, 8), Crop((20, 20, 30, 30), False, 8)]]
    pairs = build_region_pairs(crops, num_global=2, region_size=2)
    assert pairs.teacher.tolist() == [0, 1] and pairs.student.tolist() == [1, 0]


def test_attention_and_pixel_logits():
    pixels = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    queries = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    att = query_attention(pixels, queries, mask, temperature=0.01)
    torch.testing.assert_close(att, torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]))
    logits = pixel_logits(att, torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]]))
    torch.testing.assert_close(logits, torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))


def test_dino_head_shape_norm_and_groups():
    head = DINOHead(10, 7, hidden_dim=16, bottleneck_dim=4)
    x = torch.randn(5, 10)
    out = head(x)
    assert out.shape == (5, 7)
    assert out.abs().max() <= 1 + 1e-5  # cosine to unit prototypes
    frozen = [n for n, p in head.named_parameters() if not p.requires_grad]
    assert frozen == ["last_layer.parametrizations.weight.original0"]
    regularized, plain = get_params_groups(QueryHead(10, ModelConfig(16, 4, 7)))
    assert all(p.ndim == 2 for p in regularized["params"]) and len(regularized["params"]) == 4
    assert all(p.ndim == 1 for p in plain["params"]) and plain["weight_decay"] == 0.0


def test_ema_update():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for b, t, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    ema_update(teacher, student, 1.0)
    for b, t, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    ema_update(teacher, student, 0.0)
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s)


def test_cosine_schedule():
    s = cosine_scheduler(1.0, 0.1, 20, warmup_steps=5, start_warmup_value=0.0)
    assert s.shape == (20,)
    np.testing.assert_allclose(s[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    assert s[5] == 1.0 and s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[5:]) <= 0)
    m = cosine_scheduler(0.996, 1.0, 10)
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0) and np.all(np.diff(m) >= 0)
    assert cosine_scheduler(0.5, 0.0, 1).tolist() == [0.5]
    assert cosine_scheduler(1.0, 0.0, 3, warmup_steps=10).shape == (3,)
    t = linear_warmup_then_constant(0.04, 0.07, 6, 3)
    np.testing.assert_allclose(t, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    with pytest.raises(ValueError, match="total_steps"):
        cosine_scheduler(1.0, 0.0, 0)


def test_clip_and_cancel_last_layer():
    head = DINOHead(4, 3, hidden_dim=8, bottleneck_dim=2)
    head(torch.randn(6, 4)).pow(2).sum().mul(1e3).backward()
    norms = clip_gradients(head, 0.5)
    assert max(norms) > 0.5
    assert all(float(p.grad.norm()) <= 0.5 + 1e-4 for p in head.parameters() if p.grad is not None)
    cancel_gradients_last_layer(0, head, freeze_steps=1)
    assert head.last_layer.parametrizations.weight.original1.grad is None
    assert head.mlp[0].weight.grad is not None
    head(torch.randn(6, 4)).sum().backward()
    cancel_gradients_last_layer(1, head, freeze_steps=1)  # no longer frozen
    assert head.last_layer.parametrizations.weight.original1.grad is not None


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = get_rng_state()
    atomic_torch_save({"rng": state}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    set_rng_state(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


def test_loss_is_finite_for_extreme_but_valid_inputs():
    loss = QuerySDLoss(4, student_temp=0.1)
    s = torch.full((1, 2, 4), -1.0)
    assert math.isfinite(float(loss(s, -s, 0.04)))


@pytest.mark.parametrize("seed", range(5))
def test_sinkhorn_balances_prototypes(seed):
    """Rows are distributions; with enough rounds every prototype gets 1 / K of the mass."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(2, 40, (1,), generator=g))
    logits = torch.rand(3, 50, k, generator=g) * 2 - 1  # cosines, as the heads give
    logits[..., 0] += 0.5  # one prototype preferred by every point: a collapsing teacher
    q = sinkhorn_knopp(logits, 0.1, iterations=200)
    assert q.shape == logits.shape and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(3, 50))
    torch.testing.assert_close(q.reshape(-1, k).mean(0), torch.full((k,), 1 / k), atol=1e-4, rtol=0)
    plain = torch.softmax(logits / 0.1, -1).reshape(-1, k).mean(0)
    assert plain[0] > 2 / k  # plain softmax would give prototype 0 most of the mass
    # the standard 3 rounds already move mass off the favourite
    assert sinkhorn_knopp(logits, 0.1).reshape(-1, k).mean(0)[0] < plain[0]
    # converged targets ignore a constant added to a point's logits
    shifted = logits + torch.rand(3, 50, 1, generator=g)
    torch.testing.assert_close(sinkhorn_knopp(shifted, 0.1, iterations=200), q, atol=1e-4, rtol=1e-3)


def test_sinkhorn_survives_sharp_temperatures():
    logits = torch.tensor([[1.0, -1.0, 0.0], [0.9, 1.0, -1.0]])
    q = sinkhorn_knopp(logits, 1e-3)  # exp(1000) would overflow without the shared maximum
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(2))


def test_sinkhorn_loss_ignores_the_centre():
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    loss = QuerySDLoss(6, centering="sinkhorn")
    before = loss(s, t, 0.05)
    loss.center.fill_(3.0)
    torch.testing.assert_close(loss(s, t, 0.05), before)
    targets = sinkhorn_knopp(t, 0.05)
    expected = -(targets * torch.log_softmax(s / 0.1, -1)).sum(-1).mean(-1).sum() / 2
    torch.testing.assert_close(before, expected)
    with pytest.raises(ValueError, match="ema or sinkhorn"):
        QuerySDLoss(6, centering="batch")


def test_view_entropy_tells_one_prototype_from_many():
    one = torch.zeros(2, 4, 3, 3)
    one[:, 1] = 1.0  # every pixel of every view: prototype 1
    assert view_entropy([one], torch.zeros(1, 4), 0.01) < 1e-6
    many = torch.zeros(1, 4, 2, 2)
    for i in range(4):
        many[0, i, i // 2, i % 2] = 1.0  # four pixels, four prototypes
    assert view_entropy([many], torch.zeros(1, 4), 0.01) == pytest.approx(math.log(4), abs=1e-4)
    # the centre is subtracted first: it can move every pixel to another prototype
    centre = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    assert view_entropy([one], centre, 0.01) == pytest.approx(math.log(3), abs=1e-4)
