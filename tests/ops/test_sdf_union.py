"""ops.sdf_union (compiled smooth union of primitive tables) against ops.reference_sdf_union,
and the synthetic humans' fields through it."""

import pytest
import torch

from get3dhuman.ops.sdf_union import (
    CAPSULE,
    CONE,
    CUT_ELLIPSOID,
    ELLIPSOID,
    PRIMITIVE_WIDTH,
    check_union_tables,
    ellipsoid,
    reference_part_distances,
    reference_sdf_union,
    sdf_union,
    tapered_capsule,
)
from get3dhuman.synthetic import HumanField, human_color, human_parameters, human_sdf
from get3dhuman.synthetic.human import ABSENT, BLEND, human_primitives


def random_table(batch: int, kinds: list[int], parts: list[int], generator: torch.Generator,
                 inactive: float = 0.2) -> torch.Tensor:
    """Rows [batch, Q, PRIMITIVE_WIDTH] of primitives of the given kinds in the unit box, a
    fraction `inactive` switched off."""
    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    rows = []
    for kind in kinds:
        if kind in (ELLIPSOID, CUT_ELLIPSOID):
            values = [uniform(batch, 3, low=-0.5, high=0.5), uniform(batch, 3, low=0.05, high=0.4)]
            if kind == CUT_ELLIPSOID:
                values += [uniform(batch, 1, low=-0.3, high=0.3), uniform(batch, 1, low=-0.3, high=0.3),
                           uniform(batch, 1, low=-1.0, high=1.0)]
        elif kind == CAPSULE:
            values = [uniform(batch, 3, low=-0.6, high=0.6), uniform(batch, 3, low=-0.6, high=0.6),
                      uniform(batch, 1, low=0.02, high=0.2), uniform(batch, 1, low=0.02, high=0.2)]
        else:
            bottom = uniform(batch, 1, low=-0.6, high=0.0)
            values = [bottom, bottom + uniform(batch, 1, low=0.1, high=0.6), uniform(batch, 1, low=0.05, high=0.4),
                      uniform(batch, 1, low=0.05, high=0.4)]
        values = torch.cat(values, 1)
        active = (torch.rand(batch, 1, generator=generator) >= inactive).float()
        rows.append(torch.cat([values, values.new_zeros(batch, PRIMITIVE_WIDTH - 1 - values.shape[1]), active], 1))
    return torch.stack(rows, 1), torch.tensor(kinds, dtype=torch.int32), torch.tensor(parts, dtype=torch.int32)


KINDS = [ELLIPSOID, CAPSULE, CONE, CUT_ELLIPSOID, CAPSULE, ELLIPSOID, CONE, CAPSULE]
PARTS = [0, 1, 1, 2, 3, 3, 3, 4]


def separated(distances: torch.Tensor, margin: float) -> torch.Tensor:
    """Where the least part distance leads the second by more than `margin` (no near tie)."""
    two = distances.topk(2, dim=-1, largest=False).values
    return (two[..., 1] - two[..., 0]) > margin


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_kernel_matches_the_reference_on_random_tables(seed):
    generator = torch.Generator().manual_seed(seed)
    table, kinds, parts = random_table(3, KINDS, PARTS, generator)
    points = torch.rand(3, 4000, 3, generator=generator) * 2 - 1
    blend, absent = 0.05, 3.0
    result = sdf_union(points, table, kinds, parts, blend, absent)
    expected = reference_sdf_union(points, table, kinds, parts, blend, absent)
    torch.testing.assert_close(result.distance, expected.distance, atol=2e-6, rtol=1e-5)
    clear = separated(reference_part_distances(points, table, kinds, parts, absent), 1e-5)
    assert clear.float().mean() > 0.99
    assert torch.equal(result.nearest[clear], expected.nearest[clear])
    # The analytic gradient against autograd of the reference.
    moving = points.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(sdf_union(moving, table, kinds, parts, blend, absent).distance.sum(), moving)
    moving = points.clone().requires_grad_()
    (expected_gradient,) = torch.autograd.grad(
        reference_sdf_union(moving, table, kinds, parts, blend, absent).distance.sum(), moving)
    torch.testing.assert_close(gradient, expected_gradient, atol=2e-4, rtol=1e-3)


def test_a_part_without_active_primitives_is_absent():
    generator = torch.Generator().manual_seed(5)
    table, kinds, parts = random_table(2, [CAPSULE, ELLIPSOID], [0, 1], generator, inactive=0.0)
    table[1, 1, -1] = 0  # row 1 lacks part 1
    points = torch.rand(2, 500, 3, generator=generator) * 2 - 1
    result = sdf_union(points, table, kinds, parts, 1e-3, 7.0)
    capsule = tapered_capsule(points, table[:, 0, 0:3], table[:, 0, 3:6], table[:, 0, 6], table[:, 0, 7])[0]
    ball = ellipsoid(points, table[:, 1, 0:3], table[:, 1, 3:6])
    # With a tiny blend the union is the minimum; an absent part (at 7) never wins.
    torch.testing.assert_close(result.distance[1], capsule[1], atol=1e-5, rtol=0)
    assert (result.nearest[1] == 0).all()
    torch.testing.assert_close(result.distance[0], capsule[0].minimum(ball[0]), atol=1e-3, rtol=0)
    assert torch.equal(result.nearest[0], (ball[0] < capsule[0]).long())


def test_humans_through_the_kernel_equal_the_reference():
    params = human_parameters(torch.randn(6, 512, generator=torch.Generator().manual_seed(3)))
    params[:, 15] = torch.arange(6) % 4  # every hair style
    params[:, 18] = torch.arange(6) % 4  # every lower garment
    points = torch.rand(6, 6000, 3, generator=torch.Generator().manual_seed(4)) * 2 - 1
    points[:, :3000] *= 0.25
    torch.testing.assert_close(human_sdf(params, points), human_sdf(params, points, reference=True),
                               atol=2e-6, rtol=1e-5)
    colors, expected = human_color(params, points), human_color(params, points, reference=True)
    assert ((colors - expected).abs().amax(-1) > 1e-6).float().mean() < 1e-3  # ties of equal parts aside
    moving = points.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(human_sdf(params, moving).sum(), moving)
    moving = points.clone().requires_grad_()
    (expected_gradient,) = torch.autograd.grad(human_sdf(params, moving, reference=True).sum(), moving)
    # On a cone's surface its gradient is an offset of a few micrometres normalised, whose
    # direction both evaluations round differently; off the surface they agree.
    primitives = human_primitives(params)
    local = points + torch.stack([0 * params[:, 0], params[:, 0] / 2, 0 * params[:, 0]], -1).unsqueeze(1)
    off = reference_part_distances(local, primitives.table, primitives.kinds, primitives.parts,
                                   ABSENT).abs().amin(-1) > 1e-4
    assert off.float().mean() > 0.99
    torch.testing.assert_close(gradient[off], expected_gradient[off], atol=2e-4, rtol=1e-3)


def test_human_tables_name_every_part_once():
    primitives = human_primitives(human_parameters(torch.randn(2, 512, generator=torch.Generator().manual_seed(0))))
    assert len(set(primitives.names)) == len(primitives.names) == int(primitives.parts.max()) + 1
    assert primitives.table.shape == (2, len(primitives.kinds), PRIMITIVE_WIDTH)
    assert primitives.colors.shape == (2, len(primitives.names), 3)


def test_gradients_of_the_parameters_take_the_reference():
    params = human_parameters(torch.randn(1, 512, generator=torch.Generator().manual_seed(1))).requires_grad_()
    points = torch.rand(1, 100, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    (gradient,) = torch.autograd.grad(human_sdf(params, points).sum(), params)
    assert gradient.abs().sum() > 0


def test_bad_inputs_name_the_argument():
    table, kinds, parts = random_table(1, [CAPSULE, CONE], [0, 1], torch.Generator().manual_seed(0))
    points = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match=r"points must be a \[B, N, 3\] tensor"):
        sdf_union(points[0], table, kinds, parts, BLEND, ABSENT)
    with pytest.raises(ValueError, match=r"primitives must be \[B, Q, 12\] with B = 1"):
        sdf_union(points, table[..., :8], kinds, parts, BLEND, ABSENT)
    with pytest.raises(ValueError, match=r"kinds must lie in \[0, 4\)"):
        sdf_union(points, table, torch.tensor([1, 9]), parts, BLEND, ABSENT)
    with pytest.raises(ValueError, match="parts must start at 0 and grow by 0 or 1"):
        sdf_union(points, table, kinds, torch.tensor([0, 2]), BLEND, ABSENT)
    with pytest.raises(ValueError, match=r"kinds must be an integer \[Q\] tensor with Q = 2"):
        sdf_union(points, table, kinds.float(), parts, BLEND, ABSENT)
    with pytest.raises(TypeError, match="points and primitives must be float32"):
        sdf_union(points.double(), table.double(), kinds, parts, BLEND, ABSENT)
    with pytest.raises(ValueError, match="primitives must not require grad"):
        sdf_union(points, table.requires_grad_(), kinds, parts, BLEND, ABSENT)
    with pytest.raises(ValueError, match="blend must be > 0"):
        sdf_union(points, table.detach(), kinds, parts, 0.0, ABSENT)


def test_the_gradient_is_first_order_only_and_opcheck():
    table, kinds, parts = random_table(2, KINDS, PARTS, torch.Generator().manual_seed(7))
    points = (torch.rand(2, 64, 3) * 2 - 1).requires_grad_()
    (gradient,) = torch.autograd.grad(sdf_union(points, table, kinds, parts, 0.02, 2.0).distance.sum(), points,
                                      create_graph=True)
    assert not gradient.requires_grad  # no second derivatives: a gradient with create_graph has no graph
    strided = torch.rand(2, 3, 64).transpose(1, 2)
    torch.library.opcheck(torch.ops.get3dhuman.sdf_union.default, (strided, table, kinds, parts, 0.02, 2.0, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_the_cpu_kernel():
    table, kinds, parts = random_table(3, KINDS, PARTS, torch.Generator().manual_seed(11))
    points = torch.rand(3, 50000, 3) * 2 - 1
    cpu = sdf_union(points, table, kinds, parts, 0.03, 2.0)
    cuda = sdf_union(points.cuda(), table.cuda(), kinds.cuda(), parts.cuda(), 0.03, 2.0)
    torch.testing.assert_close(cuda.distance.cpu(), cpu.distance, atol=2e-6, rtol=1e-5)
    assert (cuda.nearest.cpu() == cpu.nearest).float().mean() > 0.999
    params = human_parameters(torch.randn(2, 512, generator=torch.Generator().manual_seed(0)))
    human_points = points[:2, :20000] * 0.5
    torch.testing.assert_close(human_sdf(params.cuda(), human_points.cuda()).cpu(), human_sdf(params, human_points),
                               atol=2e-6, rtol=1e-5)


def test_checked_tables_may_skip_the_value_checks():
    table, kinds, parts = random_table(2, KINDS, PARTS, torch.Generator().manual_seed(5))
    points = torch.rand(2, 300, 3) * 2 - 1
    checked = sdf_union(points, table, kinds, parts, 0.02, 2.0)
    trusted = sdf_union(points, table, kinds, parts, 0.02, 2.0, check_tables=False)
    assert torch.equal(checked.distance, trusted.distance) and torch.equal(checked.nearest, trusted.nearest)
    with pytest.raises(ValueError, match=r"kinds must lie in \[0, 4\)"):
        check_union_tables(torch.tensor([0, 4]), torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_human_distance_queries_on_cuda_never_synchronise():
    params = human_parameters(torch.randn(2, 512, generator=torch.Generator().manual_seed(1))).cuda()
    points = torch.rand(2, 4096, 3, device="cuda") - 0.5
    field = HumanField(params)
    field.sdf(points)  # the first query copies the index tables to the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            field.sdf(points)
    finally:
        torch.cuda.set_sync_debug_mode("default")
