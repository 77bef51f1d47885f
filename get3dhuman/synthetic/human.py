"""Procedural clothed humans: a parameter vector -> signed distance field and colour field.

World frame: metres, y up, the person faces +z, centred so the body spans y in [-H/2, H/2]
(H = height <= 1.95, so every human fits the [-1, 1]^3 box). The body is a smooth union of
tapered capsules, ellipsoids and cones; clothes are thicker copies of the body parts they
cover, so they sit on the skin; the colour of a surface point is the colour of the part whose
surface it is (clothes over skin), with optional stripes on the top and eyes on the face.
Each human is a table of primitives (`human_primitives`), evaluated by the compiled
`ops.sdf_union` (one pass per point, CPU and CUDA) or by torch operations (`reference=True`).

`PARAMETERS` documents the vector: one row per entry of a [B, P] tensor (physical units;
categorical entries hold the category index as a float).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from get3dhuman.ops.sdf_union import (
    CAPSULE,
    CONE,
    CUT_ELLIPSOID,
    ELLIPSOID,
    PRIMITIVE_WIDTH,
    UnionDistances,
    check_union_tables,
    reference_sdf_union,
    sdf_union,
)

BLEND = 0.012  # metres: fillet size of the smooth union between parts
ABSENT = 10.0  # distance given to a part a human does not have (it never wins the union)
HAIRLINE_SLOPE = 0.6  # dz / dy of the plane that cuts the hair cap


class Parameter(NamedTuple):
    """One entry of the human parameter vector."""

    name: str
    low: float
    high: float
    doc: str
    choices: int = 0  # > 0: categorical, the value is an index in [0, choices)


PARAMETERS = (
    Parameter("height", 1.50, 1.95, "standing height, metres"),
    Parameter("leg_ratio", 0.44, 0.52, "hip height / height"),
    Parameter("shoulder_width", 0.095, 0.125, "shoulder half-width / height"),
    Parameter("hip_width", 0.080, 0.105, "hip half-width / height"),
    Parameter("chest_depth", 0.050, 0.072, "chest half-depth / height"),
    Parameter("waist", 0.75, 1.0, "waist half-width / hip half-width"),
    Parameter("head_size", 0.056, 0.066, "head radius / height"),
    Parameter("arm_ratio", 0.36, 0.42, "arm length (shoulder to fingertip) / height"),
    Parameter("arm_girth", 0.020, 0.030, "upper-arm radius / height"),
    Parameter("leg_girth", 0.040, 0.055, "thigh radius / height"),
    Parameter("arm_spread", 10.0, 35.0, "angle of the arms from the body, degrees"),
    Parameter("elbow_bend", 0.0, 35.0, "forward bend of the forearms, degrees"),
    Parameter("leg_spread", 2.0, 9.0, "angle of the legs from vertical, degrees"),
    Parameter("knee_bend", 0.0, 12.0, "bend of the knees, degrees"),
    Parameter("asymmetry", -6.0, 6.0, "left arm angle minus right arm angle, degrees"),
    Parameter("hair_style", 0, 3, "0 short, 1 long, 2 bun, 3 none", choices=4),
    Parameter("hair_volume", 0.006, 0.03, "hair thickness over the scalp, metres"),
    Parameter("sleeve_length", 0.0, 1.0, "covered fraction of the arm: 0 sleeveless, ~0.3 short, 1 long"),
    Parameter("lower_garment", 0, 3, "0 pants, 1 shorts, 2 skirt, 3 dress", choices=4),
    Parameter("looseness", 0.005, 0.025, "clothing thickness over the body, metres"),
    Parameter("skirt_flare", 1.0, 1.6, "skirt (or dress) hem radius / hip half-width"),
    Parameter("pattern", 0, 1, "top pattern: 0 plain, 1 horizontal stripes", choices=2),
    Parameter("stripe_period", 0.03, 0.12, "stripe period, metres"),
    Parameter("skin_tone", 0.0, 1.0, "position on the skin palette, light to dark"),
    Parameter("hair_color", 0.0, 1.0, "position on the hair palette: black, brown, blond, red"),
    *(Parameter(f"top_{c}", 0.05, 0.95, f"top (or dress) colour, {c}") for c in "rgb"),
    *(Parameter(f"bottom_{c}", 0.05, 0.95, f"lower garment colour, {c}") for c in "rgb"),
    *(Parameter(f"stripe_{c}", 0.05, 0.95, f"stripe colour, {c}") for c in "rgb"),
    Parameter("shoe_shade", 0.05, 0.9, "shoe grey level"),
)
INDEX = {p.name: i for i, p in enumerate(PARAMETERS)}
NUM_PARAMETERS = len(PARAMETERS)

_SKIN = torch.tensor([[0.98, 0.84, 0.72], [0.87, 0.67, 0.52], [0.62, 0.43, 0.30], [0.36, 0.23, 0.15]])
_HAIR = torch.tensor([[0.05, 0.04, 0.04], [0.32, 0.20, 0.11], [0.85, 0.72, 0.42], [0.62, 0.24, 0.10]])
_EYES = torch.tensor([0.08, 0.06, 0.06])


def default_parameters(batch: int = 1) -> torch.Tensor:
    """[batch, P]: every parameter at the middle of its range (categories: the first)."""
    values = [0.0 if p.choices else (p.low + p.high) / 2 for p in PARAMETERS]
    return torch.tensor(values).expand(batch, -1).clone()


def _palette(palette: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along a palette [K, 3] at positions [B] in [0, 1] -> [B, 3]."""
    scaled = position.clamp(0, 1) * (len(palette) - 1)
    low = scaled.floor().long().clamp(max=len(palette) - 2)
    frac = (scaled - low).unsqueeze(-1)
    palette = palette.to(position)
    return palette[low] * (1 - frac) + palette[low + 1] * frac


def _rotate(direction: torch.Tensor, towards: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Turns unit `direction` [B, 3] by `degrees` [B] towards the orthogonal unit `towards` [B, 3]."""
    angle = torch.deg2rad(degrees).unsqueeze(-1)
    return direction * torch.cos(angle) + towards * torch.sin(angle)


def _vec(x, y, z):
    """[B, 3] from three [B] tensors (or floats broadcast against them)."""
    return torch.stack(torch.broadcast_tensors(torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(z)), -1)


def _clothing(segments, cover, loose, height):
    """Capsules (start, end, r0, r1) of a garment over a chain of limb segments (start, end, r0,
    r1, length), covering the first `cover` metres [B] of the chain, `loose` [B] thicker than the
    limb. A segment with no cover shrinks to a point inside the limb, where it cannot show."""
    covered = torch.zeros_like(cover)
    for start, end, r0, r1, length in segments:
        part = (cover - covered).clamp(0).minimum(length) / length
        shrink = (part * length / (0.02 * height)).clamp(max=1)
        end_point = start + (end - start) * part.unsqueeze(-1)
        yield start, end_point, (r0 + loose) * shrink, (r0 + (r1 - r0) * part + loose) * shrink
        covered = covered + length


class HumanPrimitives(NamedTuple):
    """The humans as tables of primitives (ops.sdf_union): rows [B, Q, PRIMITIVE_WIDTH] in the frame
    with the feet at y = 0, kinds and parts [Q] int32 (CPU), per-part base colours [B, P, 3]
    and part names [P]."""

    table: torch.Tensor
    kinds: torch.Tensor
    parts: torch.Tensor
    colors: torch.Tensor
    names: tuple[str, ...]


class _TableBuilder:
    """Collects the parts of a batch of humans, each one or more primitives."""

    def __init__(self):
        self.rows, self.kinds, self.parts, self.colors, self.names = [], [], [], [], []

    def add(self, name: str, color: torch.Tensor, *primitives: tuple[int, list[torch.Tensor], torch.Tensor | None]):
        """Part `name` of colour [B, 3]: the union of primitives (kind, entries ([B] or [B, k]
        tensors, concatenated), active [B] bool or None for always)."""
        for kind, entries, active in primitives:
            values = torch.cat([e.reshape(e.shape[0], -1) for e in entries], 1)
            pad = values.new_zeros(values.shape[0], PRIMITIVE_WIDTH - 1 - values.shape[1])
            flag = torch.ones_like(values[:, :1]) if active is None else active.to(values).unsqueeze(1)
            self.rows.append(torch.cat([values, pad, flag], 1))
            self.kinds.append(kind)
            self.parts.append(len(self.names))
        self.names.append(name)
        self.colors.append(color)

    def build(self) -> HumanPrimitives:
        index = {"dtype": torch.int32}
        return HumanPrimitives(torch.stack(self.rows, 1), torch.tensor(self.kinds, **index),
                               torch.tensor(self.parts, **index), torch.stack(self.colors, 1), tuple(self.names))


def _ellipsoid(center, radii):
    return ELLIPSOID, [center, radii]


def _capsule(start, end, radius_start, radius_end):
    return CAPSULE, [start, end, radius_start, radius_end]


def human_primitives(params: torch.Tensor) -> HumanPrimitives:
    """Every part of every human `params` [B, P] as primitives (see the module docstring)."""
    if params.dim() != 2 or params.shape[1] != NUM_PARAMETERS:
        raise ValueError(f"params must be [B, {NUM_PARAMETERS}], got {tuple(params.shape)}")
    p = {name: params[:, i] for name, i in INDEX.items()}
    zero = torch.zeros_like(p["height"])
    height = p["height"]
    hip_y, shoulder_y = p["leg_ratio"] * height, 0.818 * height
    shoulder_w, hip_w = p["shoulder_width"] * height, p["hip_width"] * height
    depth, head_r = p["chest_depth"] * height, p["head_size"] * height
    arm_r, leg_r, loose = p["arm_girth"] * height, p["leg_girth"] * height, p["looseness"]
    up, forward = _vec(zero, zero + 1, zero), _vec(zero, zero, zero + 1)
    table = _TableBuilder()

    def add(name, color, *primitives):
        table.add(name, color, *((kind, entries, None) for kind, entries in primitives))

    skin = _palette(_SKIN, p["skin_tone"])
    top = torch.stack([p["top_r"], p["top_g"], p["top_b"]], -1)
    dress = p["lower_garment"] == 3
    bottom = torch.where(dress.unsqueeze(-1), top, torch.stack([p["bottom_r"], p["bottom_g"], p["bottom_b"]], -1))

    # Head, neck, torso.
    head_c = _vec(zero, height - 1.05 * head_r, 0.1 * head_r)
    head_radii = _vec(0.88 * head_r, head_r, 0.95 * head_r)
    add("head", skin, _ellipsoid(head_c, head_radii))
    neck_top, neck_bottom = _vec(zero, head_c[:, 1] - 0.6 * head_r, zero), _vec(zero, shoulder_y - 0.02 * height, zero)
    add("neck", skin, _capsule(neck_bottom, neck_top, 0.45 * head_r, 0.4 * head_r))
    chest_c = _vec(zero, shoulder_y - 0.085 * height, zero)
    chest_r = _vec(0.95 * shoulder_w, 0.11 * height, depth)
    waist_c = _vec(zero, hip_y + 0.13 * height, zero)
    waist_r = _vec(p["waist"] * hip_w, 0.1 * height, 0.85 * depth)
    pelvis_c = _vec(zero, hip_y + 0.035 * height, zero)
    pelvis_r = _vec(1.05 * hip_w, 0.075 * height, 0.9 * depth)
    for name, center, radii in (("chest", chest_c, chest_r), ("waist", waist_c, waist_r), ("pelvis", pelvis_c, pelvis_r)):
        add(name, skin, _ellipsoid(center, radii))
    thicker = loose.unsqueeze(-1)
    add("top", top, _ellipsoid(chest_c, chest_r + thicker), _ellipsoid(waist_c, waist_r + thicker))
    add("waistband", bottom, _ellipsoid(pelvis_c, pelvis_r + thicker))

    # Arms: shoulder -> elbow -> wrist -> hand, spread sideways, forearms bent forward.
    arm_length = p["arm_ratio"] * height
    upper, fore, hand = 0.45 * arm_length, 0.40 * arm_length, 0.15 * arm_length
    for side, sign in (("left", 1.0), ("right", -1.0)):
        spread = p["arm_spread"] + sign * p["asymmetry"] / 2
        outward = _vec(zero + sign, zero, zero)
        arm_dir = _rotate(-up, outward, spread)
        fore_dir = _rotate(arm_dir, forward, p["elbow_bend"])
        shoulder = _vec(sign * (shoulder_w - 0.8 * arm_r), shoulder_y - arm_r, zero)
        elbow = shoulder + arm_dir * upper.unsqueeze(-1)
        wrist = elbow + fore_dir * fore.unsqueeze(-1)
        segments = ((shoulder, elbow, arm_r, 0.8 * arm_r, upper), (elbow, wrist, 0.8 * arm_r, 0.55 * arm_r, fore))
        for k, (start, end, r0, r1, _) in enumerate(segments):
            add(f"{side}_arm{k}", skin, _capsule(start, end, r0, r1))
        add(f"{side}_hand", skin, _capsule(wrist, wrist + fore_dir * hand.unsqueeze(-1), 0.6 * arm_r, 0.5 * arm_r))
        for k, sleeve in enumerate(_clothing(segments, p["sleeve_length"] * (upper + fore), loose, height)):
            add(f"{side}_sleeve{k}", top, _capsule(*sleeve))

    # Legs: hip -> knee -> ankle, feet pointing forward, knees bent backwards.
    foot_h = 0.04 * height
    garment = p["lower_garment"]
    leg_cover = torch.where(garment == 0, 1.0, torch.where(garment == 1, 0.45, 0.0))  # of hip -> ankle
    shoe_color = p["shoe_shade"].unsqueeze(-1).expand(-1, 3)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        leg_dir = _rotate(-up, _vec(zero + sign, zero, zero), p["leg_spread"])
        vertical = (hip_y - foot_h) / torch.cos(torch.deg2rad(p["leg_spread"]))
        thigh, shin = 0.52 * vertical, 0.48 * vertical
        shin_dir = _rotate(leg_dir, -forward, p["knee_bend"])
        hip = _vec(sign * 0.55 * hip_w, hip_y, zero)
        knee = hip + leg_dir * thigh.unsqueeze(-1)
        ankle = knee + shin_dir * shin.unsqueeze(-1)
        segments = ((hip, knee, leg_r, 0.62 * leg_r, thigh), (knee, ankle, 0.6 * leg_r, 0.38 * leg_r, shin))
        for k, (start, end, r0, r1, _) in enumerate(segments):
            add(f"{side}_leg{k}", skin, _capsule(start, end, r0, r1))
        for k, trouser in enumerate(_clothing(segments, leg_cover * (thigh + shin), loose, height)):
            add(f"{side}_trouser{k}", bottom, _capsule(*trouser))
        heel = _vec(ankle[:, 0], 0.028 * height, ankle[:, 2] - 0.02 * height)
        toe = _vec(ankle[:, 0] + sign * 0.01 * height, 0.022 * height, ankle[:, 2] + 0.1 * height)
        add(f"{side}_shoe", shoe_color, _capsule(heel, toe, 0.03 * height, 0.024 * height))

    # Skirt (skirt and dress): a cone from the waist to the knees.
    knee_y = 0.52 * hip_y + 0.48 * foot_h
    skirt = [knee_y, hip_y + 0.12 * height, p["skirt_flare"] * 1.2 * hip_w + loose, p["waist"] * hip_w + loose]
    table.add("skirt", bottom, (CONE, skirt, garment >= 2))

    # Hair: a cap over the scalp, cut by a plane tilted in (y, z) (above the forehead at the
    # front, down to the nape at the back), plus a long tail or a bun.
    style = p["hair_style"]
    scalp = [head_c, head_radii + p["hair_volume"].unsqueeze(-1), head_c[:, 1] - 0.2 * head_r, head_c[:, 2],
             torch.full_like(zero, HAIRLINE_SLOPE)]
    tail_top, tail_bottom = head_c + _vec(zero, zero, -0.55 * head_r), _vec(zero, shoulder_y - 0.1 * height, -0.75 * depth - 0.5 * head_r)
    bun_radii = _vec(0.45 * head_r, 0.45 * head_r, 0.45 * head_r)
    table.add("hair", _palette(_HAIR, p["hair_color"]), (CUT_ELLIPSOID, scalp, style != 3),
              (*_capsule(tail_top, tail_bottom, 0.7 * head_r, 0.45 * head_r), style == 1),
              (*_ellipsoid(head_c + _vec(zero, 0.7 * head_r, -0.75 * head_r), bun_radii), style == 2))
    return table.build()


class HumanField:
    """The distance and colour fields of the humans `params` [B, P], their primitive tables
    built once (`human_primitives`) for many queries, as the sphere tracer and Newton
    projections make. The compiled ops.sdf_union evaluates them where it applies (float32 points
    on the CPU or a CUDA device, params not requiring grad; differentiable with respect to the
    points), else, or with `reference`, torch operations (ops.reference_sdf_union;
    differentiable with respect to points and params)."""

    def __init__(self, params: torch.Tensor, reference: bool = False):
        self.params, self.reference = params, reference
        self.primitives = human_primitives(params)
        check_union_tables(self.primitives.kinds, self.primitives.parts)  # once, on the CPU: no device reads per query
        self._indices = {}

    def _distances(self, points: torch.Tensor) -> UnionDistances:
        params, table = self.params, self.primitives.table
        if points.dim() != 3 or points.shape[0] != params.shape[0] or points.shape[2] != 3:
            raise ValueError(f"points must be [B, N, 3] with B = {params.shape[0]}, got {tuple(points.shape)}")
        zero = torch.zeros_like(params[:, 0])
        local = points + _vec(zero, params[:, INDEX["height"]] / 2, zero).unsqueeze(1)  # feet at y = 0
        if points.device not in self._indices:
            self._indices[points.device] = (self.primitives.kinds.to(points.device),
                                            self.primitives.parts.to(points.device))
        kinds, parts = self._indices[points.device]
        compiled = (not self.reference and local.dtype == torch.float32 and local.device.type in ("cpu", "cuda")
                    and not table.requires_grad)
        if compiled:
            return sdf_union(local, table, kinds, parts, BLEND, ABSENT, check_tables=False)
        return reference_sdf_union(local, table.to(local.dtype), kinds, parts, BLEND, ABSENT)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """Signed distance (metres, negative inside) at points [B, N, 3] -> [B, N]: the smooth
        union (BLEND) of the parts."""
        return self._distances(points).distance

    def color(self, points: torch.Tensor) -> torch.Tensor:
        """Colour in [0, 1] [B, N, 3] of the part whose surface is nearest to each point
        (meaningful on and near the surface), with the top's stripes and the eyes."""
        nearest = self._distances(points).nearest  # [B, N]
        names = self.primitives.names
        color = torch.gather(self.primitives.colors.to(points.dtype), 1, nearest.unsqueeze(-1).expand(-1, -1, 3))
        p = {name: self.params[:, i].unsqueeze(1) for name, i in INDEX.items()}
        y = points[..., 1] + p["height"] / 2
        stripe_parts = [i for i, n in enumerate(names) if n == "top" or "_sleeve" in n]
        on_top = torch.isin(nearest, torch.tensor(stripe_parts, device=nearest.device))
        stripes = on_top & (p["pattern"] == 1) & (torch.sin(2 * math.pi * y / p["stripe_period"]) > 0)
        stripe_color = torch.stack([p["stripe_r"], p["stripe_g"], p["stripe_b"]], -1).expand_as(color)
        color = torch.where(stripes.unsqueeze(-1), stripe_color, color)
        # Eyes: two dark spots on the front of the face, so that front and back views differ.
        height, head_r = p["height"], p["head_size"] * p["height"]
        eye_y = height / 2 - 1.05 * head_r + 0.15 * head_r
        on_face = (nearest == names.index("head")) & (points[..., 2] > 0.5 * head_r)
        eye = (on_face & ((points[..., 0].abs() - 0.35 * head_r).abs() < 0.13 * head_r)
               & ((points[..., 1] - eye_y).abs() < 0.09 * head_r))
        return torch.where(eye.unsqueeze(-1), _EYES.to(color), color)


def human_sdf(params: torch.Tensor, points: torch.Tensor, reference: bool = False) -> torch.Tensor:
    """Signed distance (metres, negative inside) of the humans `params` [B, P] at points
    [B, N, 3] -> [B, N] (HumanField(params, reference).sdf; build a HumanField for many queries)."""
    return HumanField(params, reference).sdf(points)


def human_color(params: torch.Tensor, points: torch.Tensor, reference: bool = False) -> torch.Tensor:
    """Colour in [0, 1] [B, N, 3] of the humans `params` [B, P] at points [B, N, 3]
    (HumanField(params, reference).color)."""
    return HumanField(params, reference).color(points)
