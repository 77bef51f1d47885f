"""The whole decoded pixel-aligned query in one Triton kernel.

One program evaluates an implicit decoder (get3dhuman.ops.DecoderWeights) for a block of
points: it projects the points by the calibration, samples the feature map bilinearly
(align_corners=True, zero padding), adds bias and depth terms, and runs every layer with its
activation, without writing any activation to memory.

Two sources, chosen by `projected`:
- the feature map itself [B, H, W, C] (channels-last): the input-reading layers multiply the
  sampled C channels by their weights;
- the pre-projected map [B, H, W, K] of get3dhuman.ops.project_inputs: sampling it gives the
  input-reading layers' pre-activations directly (exact, since sampling is linear).

Register budget. A [BLOCK, width] activation stays in registers only for every second layer:
layer 0 and every even layer are produced in column chunks of CHUNK, and each chunk is
multiplied at once into the accumulator of the next (odd) layer, which is held whole. So the
largest tiles are [BLOCK, width of an odd layer] and [width of an even layer's input, CHUNK]
of weights: the official texture decoder [513, 1024, 512, 256, 128, 3] never holds its
1024-wide layer, nor a full 512 x 256 weight.

Precision: fp16/bf16 operands with fp32 accumulation; fp32 operands use TF32 tensor cores
only when torch.backends.cuda.matmul.allow_tf32 is set, as torch's own matmuls do.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

LAST_OPS = {None: 0, "sigmoid": 1, "tanh": 2}
# (BLOCK, num_warps): the fewest register spills within the 227 KB of shared memory per block
# of an H100/H200, from ptxas figures of the official decoders compiled for sm_90 (see
# compile_for_gpu); fp32 projected maps need smaller blocks for their wider weight tiles.
# Not yet timed on a GPU (BENCHMARKS.md).
BLOCK_AND_WARPS = {"default": (32, 8), "fp32 projected": (16, 4)}


@triton.jit
def _sample(source_ptr, offset, weight, valid, columns, column_mask):
    """One corner's contribution: weight * source[offset + columns] -> [BLOCK, COLS] fp32."""
    values = tl.load(source_ptr + offset[:, None] + columns[None, :], mask=valid[:, None] & column_mask[None, :], other=0.0)
    return weight[:, None] * values.to(tl.float32)


@triton.jit
def _bilinear(source_ptr, corners, columns, column_mask):
    """Bilinear samples of `columns` at each point, summed over the 4 corners: [BLOCK, COLS] fp32."""
    total = _sample(source_ptr, corners[0][0], corners[0][1], corners[0][2], columns, column_mask)
    for corner in tl.static_range(1, 4):
        total += _sample(source_ptr, corners[corner][0], corners[corner][1], corners[corner][2], columns, column_mask)
    return total


@triton.jit
def _add_layer_terms(
    pre, image, corners, depth, input_weight_ptr, depth_weight_ptr, bias_ptr,
    LAYER: tl.constexpr, start, COLS: tl.constexpr,
    WIDTHS: tl.constexpr, INPUT_OFFSETS: tl.constexpr, BIAS_OFFSETS: tl.constexpr,
    CHANNELS: tl.constexpr, PROJECTED: tl.constexpr, CHANNEL_CHUNK: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    """pre [BLOCK, COLS] + layer LAYER's bias and decoder-input terms for its columns [start, start + COLS)
    (zero beyond the layer's width): the sampled features' part and the depth feature's."""
    local = tl.arange(0, COLS)
    column_mask = local < WIDTHS[LAYER] - start
    pre += tl.load(bias_ptr + BIAS_OFFSETS[LAYER] + start + local, mask=column_mask, other=0.0).to(tl.float32)[None, :]
    if INPUT_OFFSETS[LAYER] >= 0:
        rows = INPUT_OFFSETS[LAYER] + start + local  # rows of the packed input-reading layers
        if PROJECTED:
            pre += _bilinear(image, corners, rows, column_mask)
        else:
            for channel_start in range(0, CHANNELS, CHANNEL_CHUNK):
                channels = channel_start + tl.arange(0, CHANNEL_CHUNK)
                channel_mask = channels < CHANNELS
                weight = tl.load(
                    input_weight_ptr + rows[None, :] * CHANNELS + channels[:, None],
                    mask=channel_mask[:, None] & column_mask[None, :], other=0.0,
                )
                sampled = _bilinear(image, corners, channels, channel_mask)
                pre = _dot(sampled.to(weight.dtype), weight, pre, PRECISION, UPCAST_DOT)
        depth_weight = tl.load(depth_weight_ptr + rows, mask=column_mask, other=0.0).to(tl.float32)
        pre += depth[:, None] * depth_weight[None, :]
    return pre


@triton.jit
def _hidden_weight(hidden_ptr, first_row, ROWS: tl.constexpr, rows, first_column, COLS: tl.constexpr, columns):
    """Tile [ROWS, COLS] at (first_row, first_column) of a transposed hidden weight [rows, columns]
    (row-major), zero outside it."""
    r = first_row + tl.arange(0, ROWS)
    c = first_column + tl.arange(0, COLS)
    return tl.load(hidden_ptr + r[:, None] * columns + c[None, :], mask=(r < rows)[:, None] & (c < columns)[None, :], other=0.0)


@triton.jit
def _dot(a, b, accumulator, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """a @ b + accumulator (fp32). UPCAST_DOT: multiply in fp32 the (already rounded) operands,
    for the Triton interpreter, whose dot multiplies bfloat16 bit patterns as integers; exact,
    since products of bfloat16 values fit in fp32."""
    if UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), accumulator, input_precision="ieee")
    return tl.dot(a, b, accumulator, input_precision=PRECISION)


@triton.jit
def _leaky_relu(x, SLOPE: tl.constexpr):
    return tl.where(x > 0, x, x * SLOPE)


@triton.jit
def decoded_query_kernel(
    source_ptr, points_ptr, calib_ptr, input_weight_ptr, depth_weight_ptr, bias_ptr, hidden_ptr, out_ptr,
    num_points, height, width, depth_scale,
    SOURCE_CHANNELS: tl.constexpr, CHANNELS: tl.constexpr, PROJECTED: tl.constexpr,
    WIDTHS: tl.constexpr, PADDED: tl.constexpr, INPUT_OFFSETS: tl.constexpr,
    HIDDEN_OFFSETS: tl.constexpr, BIAS_OFFSETS: tl.constexpr, LAST_OP: tl.constexpr, SLOPE: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, CHANNEL_CHUNK: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """Decoder output for points [program_id(0) * BLOCK, ... + BLOCK) of batch entry program_id(1).

    source: [B, H, W, SOURCE_CHANNELS] contiguous (the feature map, or the projected map).
    points [B, N, 3] and calib [B, 4, 4], contiguous.
    input_weight [K, CHANNELS]: the input-reading layers' feature weights (direct source only).
    depth_weight [K]: their depth-feature weights. bias: every layer's bias, packed.
    hidden: each layer i >= 1's hidden weight transposed, [WIDTHS[i - 1], WIDTHS[i]] row-major, packed.
    out [B, N, WIDTHS[-1]].
    WIDTHS[i]: layer i's output width; PADDED[i]: that width padded to a power of two >= 16.
    INPUT_OFFSETS[i]: layer i's first row in input_weight / depth_weight (and channel in the
    projected map), or -1 when layer i does not read the decoder input.
    """
    NUM_LAYERS: tl.constexpr = len(WIDTHS)
    batch = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_mask = rows < num_points
    point = points_ptr + (batch * num_points + rows) * 3
    px = tl.load(point, mask=row_mask, other=0.0).to(tl.float32)
    py = tl.load(point + 1, mask=row_mask, other=0.0).to(tl.float32)
    pz = tl.load(point + 2, mask=row_mask, other=0.0).to(tl.float32)
    calib = calib_ptr + batch * 16
    u = tl.load(calib).to(tl.float32) * px + tl.load(calib + 1).to(tl.float32) * py
    u += tl.load(calib + 2).to(tl.float32) * pz + tl.load(calib + 3).to(tl.float32)
    v = tl.load(calib + 4).to(tl.float32) * px + tl.load(calib + 5).to(tl.float32) * py
    v += tl.load(calib + 6).to(tl.float32) * pz + tl.load(calib + 7).to(tl.float32)
    z = tl.load(calib + 8).to(tl.float32) * px + tl.load(calib + 9).to(tl.float32) * py
    z += tl.load(calib + 10).to(tl.float32) * pz + tl.load(calib + 11).to(tl.float32)
    depth = z * depth_scale

    # align_corners=True pixel coordinates, clamped so that far points stay outside yet fit in int32.
    x = tl.minimum(tl.maximum((u + 1) * 0.5 * (width - 1), -2.0), width + 1.0)
    y = tl.minimum(tl.maximum((v + 1) * 0.5 * (height - 1), -2.0), height + 1.0)
    x_floor = tl.floor(x)
    y_floor = tl.floor(y)
    fx = x - x_floor
    fy = y - y_floor
    x0 = x_floor.to(tl.int32)
    y0 = y_floor.to(tl.int32)
    inside_x0 = (x0 >= 0) & (x0 < width)
    inside_x1 = (x0 + 1 >= 0) & (x0 + 1 < width)
    inside_y0 = (y0 >= 0) & (y0 < height) & row_mask
    inside_y1 = (y0 + 1 >= 0) & (y0 + 1 < height) & row_mask
    image = source_ptr + batch * height * width * SOURCE_CHANNELS
    corner = (y0 * width + x0) * SOURCE_CHANNELS
    # (offset, weight, inside) of the corners (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1).
    corners = (
        (corner, (1 - fx) * (1 - fy), inside_y0 & inside_x0),
        (corner + SOURCE_CHANNELS, fx * (1 - fy), inside_y0 & inside_x1),
        (corner + width * SOURCE_CHANNELS, (1 - fx) * fy, inside_y1 & inside_x0),
        (corner + (width + 1) * SOURCE_CHANNELS, fx * fy, inside_y1 & inside_x1),
    )

    # Even layers are produced in column chunks, each multiplied at once into the next (odd)
    # layer's accumulator; only odd layers' activations are held whole (module docstring).
    for layer in tl.static_range(0, NUM_LAYERS, 2):
        if layer > 0:
            hidden = _leaky_relu(pre, SLOPE).to(hidden_ptr.dtype.element_ty)  # noqa: F821 (set by the previous layer)
        if layer + 1 < NUM_LAYERS:
            # tl.constexpr(...): Triton 3.6 (torch 2.11's) takes a tuple element indexed by a
            # static_range variable for a plain int, and its compiler fails on such a shape.
            accumulator = tl.zeros((BLOCK, tl.constexpr(PADDED[layer + 1])), tl.float32)
            for start in range(0, WIDTHS[layer], CHUNK):
                if layer == 0:
                    chunk = tl.zeros((BLOCK, CHUNK), tl.float32)
                else:
                    weight = _hidden_weight(hidden_ptr + HIDDEN_OFFSETS[layer], 0, PADDED[layer - 1], WIDTHS[layer - 1], start, CHUNK, WIDTHS[layer])
                    chunk = _dot(hidden, weight, None, PRECISION, UPCAST_DOT)
                chunk = _add_layer_terms(
                    chunk, image, corners, depth, input_weight_ptr, depth_weight_ptr, bias_ptr, layer, start, CHUNK,
                    WIDTHS, INPUT_OFFSETS, BIAS_OFFSETS, CHANNELS, PROJECTED, CHANNEL_CHUNK, PRECISION, UPCAST_DOT,
                )
                weight = _hidden_weight(hidden_ptr + HIDDEN_OFFSETS[layer + 1], start, CHUNK, WIDTHS[layer], 0, PADDED[layer + 1], WIDTHS[layer + 1])
                accumulator = _dot(_leaky_relu(chunk, SLOPE).to(weight.dtype), weight, accumulator, PRECISION, UPCAST_DOT)
            pre = _add_layer_terms(
                accumulator, image, corners, depth, input_weight_ptr, depth_weight_ptr, bias_ptr, layer + 1, 0, PADDED[layer + 1],
                WIDTHS, INPUT_OFFSETS, BIAS_OFFSETS, CHANNELS, PROJECTED, CHANNEL_CHUNK, PRECISION, UPCAST_DOT,
            )
        else:  # the last layer, with no layer to feed: computed whole (decoder outputs are narrow)
            if layer == 0:
                pre = tl.zeros((BLOCK, tl.constexpr(PADDED[layer])), tl.float32)
            else:
                weight = _hidden_weight(hidden_ptr + HIDDEN_OFFSETS[layer], 0, PADDED[layer - 1], WIDTHS[layer - 1], 0, PADDED[layer], WIDTHS[layer])
                pre = _dot(hidden, weight, None, PRECISION, UPCAST_DOT)
            pre = _add_layer_terms(
                pre, image, corners, depth, input_weight_ptr, depth_weight_ptr, bias_ptr, layer, 0, PADDED[layer],
                WIDTHS, INPUT_OFFSETS, BIAS_OFFSETS, CHANNELS, PROJECTED, CHANNEL_CHUNK, PRECISION, UPCAST_DOT,
            )

    if LAST_OP == 1:
        pre = tl.sigmoid(pre)
    elif LAST_OP == 2:
        pre = 2 * tl.sigmoid(2 * pre) - 1  # tanh
    OUT: tl.constexpr = WIDTHS[NUM_LAYERS - 1]
    columns = tl.arange(0, PADDED[NUM_LAYERS - 1])
    out = out_ptr + (batch * num_points + rows)[:, None] * OUT + columns[None, :]
    tl.store(out, pre.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & (columns < OUT)[None, :])


class PackedDecoder(NamedTuple):
    """A decoder's parameters in the layout decoded_query_kernel reads (get3dhuman.ops.query_field packs them).

    input_weight [K, C]: the feature columns of the input-reading layers (0 and the
    re-concatenation layers), stacked. depth_weight [K]: their depth-feature column.
    bias [sum of widths]: every layer's bias. hidden: each layer i >= 1's hidden weight,
    transposed to [width of layer i - 1, width of layer i], flattened and concatenated.
    widths: every layer's output width. concat_layers: as the decoder's. last_op: LAST_OPS'
    value of the decoder's. slope: the hidden layers' leaky ReLU slope.
    """

    input_weight: torch.Tensor
    depth_weight: torch.Tensor
    bias: torch.Tensor
    hidden: torch.Tensor
    widths: list[int]
    concat_layers: list[int]
    last_op: int
    slope: float


def _padded(width: int) -> int:
    return max(16, triton.next_power_of_2(width))


def _offsets(sizes) -> tuple[int, ...]:
    """Start of each size in a packed buffer."""
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return tuple(starts)


def launch_configuration(
    widths, concat_layers, channels: int, projected: bool, dtype: torch.dtype, interpreted: bool = False
) -> dict:
    """The compile-time arguments of decoded_query_kernel (constexprs and launch options) for a
    decoder of layer output `widths` and re-concatenation layers `concat_layers` reading
    `channels` features; `interpreted`: for the Triton interpreter."""
    widths = tuple(int(w) for w in widths)
    padded = tuple(_padded(w) for w in widths)
    input_layers = [0, *concat_layers]
    input_starts = dict(zip(input_layers, _offsets(widths[i] for i in input_layers)))
    block, warps = BLOCK_AND_WARPS["fp32 projected" if projected and dtype == torch.float32 else "default"]
    precision = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return {
        "SOURCE_CHANNELS": sum(widths[i] for i in input_layers) if projected else channels,
        "CHANNELS": channels,
        "PROJECTED": projected,
        "WIDTHS": widths,
        "PADDED": padded,
        "INPUT_OFFSETS": tuple(input_starts.get(i, -1) for i in range(len(widths))),
        "HIDDEN_OFFSETS": (0, *_offsets(widths[i - 1] * widths[i] for i in range(1, len(widths)))),
        "BIAS_OFFSETS": _offsets(widths),
        "BLOCK": block,
        "CHUNK": 32,
        "CHANNEL_CHUNK": 32,
        "PRECISION": precision,
        "UPCAST_DOT": dtype == torch.bfloat16 and interpreted,
        "num_warps": warps,
    }


def decoded_query(
    source: torch.Tensor,
    points: torch.Tensor,
    calib: torch.Tensor,
    packed: PackedDecoder,
    depth_scale: float,
    projected: bool,
) -> torch.Tensor:
    """Runs decoded_query_kernel: decoder outputs [B, N, out] at `points`.

    source: [B, S, H, W] feature map (S = C) or projected map (S = K) in any memory format;
    points [B, N, 3], calib [B, 4, 4], all in one dtype and on one device (CUDA, or the CPU
    under TRITON_INTERPRET=1). Inputs are not checked here (get3dhuman.ops.query_field does).
    """
    batch, _, height, width = source.shape
    num_points = points.shape[1]
    channels = packed.input_weight.shape[1]
    interpreted = source.device.type == "cpu"  # only the interpreter runs CPU tensors
    config = launch_configuration(packed.widths, packed.concat_layers, channels, projected, source.dtype, interpreted)
    config["SLOPE"] = packed.slope
    out = source.new_empty(batch, num_points, packed.widths[-1])
    if num_points == 0 or batch == 0:
        return out
    grid = (triton.cdiv(num_points, config["BLOCK"]), batch)
    decoded_query_kernel[grid](
        source.permute(0, 2, 3, 1).contiguous(), points.contiguous(), calib.contiguous(),
        packed.input_weight, packed.depth_weight, packed.bias, packed.hidden, out,
        num_points, height, width, float(depth_scale), LAST_OP=packed.last_op, **config,
    )
    return out


_POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def compile_for_gpu(widths, concat_layers, channels: int, projected: bool, dtype: torch.dtype, slope: float,
                    capability: int = 90):
    """Compiles decoded_query_kernel ahead of time for an NVIDIA GPU of compute `capability`
    (90: H100/H200), with no GPU present: the real compiler's check, and its resource figures
    (``.metadata.shared`` bytes, ``.asm['ptx']`` for ptxas -v). Needs TRITON_INTERPRET unset.
    Returns triton's CompiledKernel."""
    from triton.backends.compiler import GPUTarget

    config = launch_configuration(widths, concat_layers, channels, projected, dtype)
    options = {"num_warps": config.pop("num_warps")}
    config.update(LAST_OP=LAST_OPS["sigmoid"], SLOPE=slope)
    pointers = ("source_ptr", "points_ptr", "calib_ptr", "input_weight_ptr", "depth_weight_ptr", "bias_ptr", "hidden_ptr", "out_ptr")
    signature = {name: _POINTER_TYPES[dtype] for name in pointers}
    signature.update(num_points="i32", height="i32", width="i32", depth_scale="fp32")
    signature.update(dict.fromkeys(config, "constexpr"))
    source = triton.compiler.ASTSource(fn=decoded_query_kernel, signature=signature, constexprs=config)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
