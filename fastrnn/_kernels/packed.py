"""Per-step products against a weight matrix packed once per layer call.

A time step multiplies a few rows (one batch piece) by a whole weight matrix. Through
BLAS every such call repacks the matrix, T times per layer: at (B, H) = (64, 1024) the
threaded OpenBLAS steps ran at about 350 GFLOP/s where a large sgemm reaches 450-470.
Here the matrix is packed once, into column panels, and each step runs a register-tiled
kernel over them. Its inner loop is written directly as LLVM vector code (the scalar
loop numba would emit for it did not vectorise: ~20 GFLOP/s), so it keeps
``TILE_ROWS x PANEL_VECTORS`` accumulator vectors in registers.

Packing and the product are compiled once per dtype as C functions (see ``native``).

Packed layout: panel ``p`` holds columns ``p*w : (p+1)*w`` of the right-hand matrix B
(``inner`` x ``cols``), ``w = PANEL_BYTES // itemsize``, as ``inner`` contiguous rows of
``w`` values; columns past ``cols`` are zeros.
"""

import llvmlite.binding as llvm_binding
import llvmlite.ir as ir
import numpy as np
from numba import carray, types
from numba.core import cgutils, config
from numba.extending import intrinsic, register_jitable

from .._config import jit_helper
from .native import ARRAY, INDEX, export


def _vector_bytes() -> int:
    """One vector register's width on the CPU numba compiles for: 64 with AVX-512, else 32.

    numba compiles for this machine unless NUMBA_CPU_NAME names another CPU, whose
    features are then those in NUMBA_CPU_FEATURES. LLVM splits vectors wider than the
    target's into several registers, so the kernels stay correct on any CPU.
    """
    if config.CPU_NAME:
        return 64 if "+avx512f" in (config.CPU_FEATURES or "") else 32
    return 64 if llvm_binding.get_host_cpu_features().get("avx512f", False) else 32


VECTOR_BYTES = _vector_bytes()
# Accumulators: TILE_ROWS x PANEL_VECTORS vectors. On AVX-512 (32 registers), 8x2 and
# 4x4 ran a (T, B, H) = (50, 64, 1024) recurrence on two threads in 14.0-14.5 ms, 4x2 in
# 16.8-17.1 ms; 8x2 keeps panels 32 floats wide, so less padding when H is not a
# multiple of 64. With 16 registers (AVX2), 4x2 leaves room for the operands.
PANEL_VECTORS = 2
PANEL_BYTES = PANEL_VECTORS * VECTOR_BYTES
TILE_ROWS = 8 if VECTOR_BYTES == 64 else 4
# Steps of the inner dimension per pass over the panels; each pass reloads and stores the
# tiles' accumulators. With 256 (a 32 KiB slice of a 128-byte panel: all of Zen 4's L1,
# so it is not kept there beside the rows of A anyway) the (T, B, I, H) = (50, 64, 512,
# 1024) layers took 2-6% more time than with 512 (LSTM, GRU and RNN, inference and
# training, float32 and float64, AVX-512 and AVX2 builds, on Zen 4); 1024 and 4096 did
# no better than 512. Products over at most 256 steps are unchanged.
INNER_CHUNK = 512
# How far ahead, in bytes of a panel, the tiles of four rows or more ask for the panel to
# be brought into L2. A weight larger than L2 streams from L3 or memory once per step, and
# the first row tile of each pass waited for it. On Zen 4 the (50, 64, 512, 1024) layers
# took 0.82-0.98x the time with it (LSTM, GRU and RNN; float32 and float64; AVX-512 and
# AVX2 builds), and an LSTM forward at (50, B, 512, 1024) 0.80x, 0.83x and 0.81x with the
# batch pieces of 4, 5 and 6 rows that B = 8, 10 and 12 give. Where the weights fit in L2
# it cost nothing measurable from 6 rows up and 0-2.5% at 4 and 5; tiles of 3 rows lost
# 4-8% there and tiles of 1 or 2 rows 1-15%, large weights or not, so they go without.
# 4 KiB ahead gained less (0.97-0.99x).
PREFETCH_BYTES = 16 * 2**10
CACHE_LINE_BYTES = 64  # one prefetch per line of a panel's row


def _argument_readers(context, builder, signature, args):
    """For an intrinsic's code generation: ``index(i)``, argument i as a 64-bit integer, and
    ``data(i)``, the data pointer of array argument i."""
    arg_types = signature.args

    def index(position):
        return context.cast(builder, args[position], arg_types[position], types.int64)

    def data(position):
        return context.make_array(arg_types[position])(context, builder, args[position]).data

    return index, data


def _tile_kernel(tile_rows: int, chains: int, panels: int = 1, prefetch: bool = False):
    """An intrinsic: c[tile_rows, panels*w] += a[tile_rows, :count] @ (``panels`` panels)[:count].

    Arguments (c, c_offset, ldc, a, a_offset, lda, panel, panel_offset, count,
    panel_stride): flat arrays of one dtype, with element offsets and row strides; the
    panels follow each other ``panel_stride`` elements apart, and their columns follow
    each other in ``c``. No bounds are checked. With ``chains`` > 1 the steps of the inner
    dimension go round-robin to that many sets of accumulators, summed at the end: a tile
    of one or two rows has too few accumulators to hide the latency of a multiply-add
    otherwise. With ``prefetch`` each step also asks for the panels ``PREFETCH_BYTES``
    ahead: a hint, which does not fault where that runs past the end of the panels.
    """
    row_vectors = panels * PANEL_VECTORS

    @intrinsic
    def tile(typingctx, c, c_offset, ldc, a, a_offset, lda, panel, panel_offset, count, panel_stride):
        signature = types.void(c, c_offset, ldc, a, a_offset, lda, panel, panel_offset, count, panel_stride)

        def codegen(context, builder, signature, args):
            arg_types = signature.args
            i64 = ir.IntType(64)
            index, data = _argument_readers(context, builder, signature, args)

            def constant(value):
                return ir.Constant(i64, value)

            dtype = arg_types[0].dtype
            scalar = context.get_data_type(dtype)
            lanes = VECTOR_BYTES * 8 // dtype.bitwidth
            width = lanes * PANEL_VECTORS
            vector = ir.VectorType(scalar, lanes)
            align = dtype.bitwidth // 8
            fma = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(vector, [vector, vector, vector]),
                f"llvm.fma.v{lanes}{'f32' if dtype.bitwidth == 32 else 'f64'}",
            )
            if prefetch:
                byte_pointer = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                prefetch_into_l2 = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0i8"
                )
            broadcast = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            undefined = ir.Constant(vector, ir.Undefined)
            ldc, lda, count = index(2), index(5), index(8)
            c_base = builder.gep(data(0), [index(1)])
            a_base = builder.gep(data(3), [index(4)])
            panel_base = builder.gep(data(6), [index(7)])
            panel_bases = [builder.gep(panel_base, [builder.mul(index(9), constant(q))]) for q in range(panels)]
            c_rows = [builder.gep(c_base, [builder.mul(ldc, constant(r))]) for r in range(tile_rows)]
            a_rows = [builder.gep(a_base, [builder.mul(lda, constant(r))]) for r in range(tile_rows)]

            def vector_at(row_pointer, v):
                return builder.bitcast(builder.gep(row_pointer, [constant(v * lanes)]), vector.as_pointer())

            def multiply_add(k, sums):
                """sums (tile_rows * row_vectors vectors) += a[:, k] (x) panels[k]."""
                columns = []
                for base in panel_bases:
                    panel_row = builder.gep(base, [builder.mul(k, constant(width))])
                    columns += [builder.load(vector_at(panel_row, v), align=align) for v in range(PANEL_VECTORS)]
                    if prefetch:
                        ahead = builder.gep(panel_row, [constant(PREFETCH_BYTES // align)])
                        ahead = builder.bitcast(ahead, byte_pointer)
                        for line in range(0, PANEL_BYTES, CACHE_LINE_BYTES):
                            # Read access, locality 2 (L2 and beyond), data cache.
                            arguments = [builder.gep(ahead, [constant(line)]), i32(0), i32(2), i32(1)]
                            builder.call(prefetch_into_l2, arguments)
                updated = []
                for r in range(tile_rows):
                    value = builder.load(builder.gep(a_rows[r], [k]), align=align)
                    single = builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0))
                    splat = builder.shuffle_vector(single, undefined, broadcast)
                    for v in range(row_vectors):
                        updated.append(builder.call(fma, [splat, columns[v], sums[r * row_vectors + v]]))
                return updated

            def loop(k_start, initial, step, name):
                """Run k from k_start while k + step <= count; returns (k, accumulators) after it."""
                before = builder.block
                header = builder.append_basic_block(f"{name}.header")
                body = builder.append_basic_block(f"{name}.body")
                after = builder.append_basic_block(f"{name}.after")
                builder.branch(header)
                builder.position_at_end(header)
                k = builder.phi(i64)
                k.add_incoming(k_start, before)
                phis = []
                for value in initial:
                    phi = builder.phi(vector)
                    phi.add_incoming(value, before)
                    phis.append(phi)
                builder.cbranch(builder.icmp_signed("<=", builder.add(k, constant(step)), count), body, after)
                builder.position_at_end(body)
                per_set = tile_rows * row_vectors
                updated = []
                for chain in range(step):
                    chain_sums = phis[chain * per_set : (chain + 1) * per_set]
                    updated += multiply_add(builder.add(k, constant(chain)), chain_sums)
                k.add_incoming(builder.add(k, constant(step)), builder.block)
                for phi, value in zip(phis, updated, strict=True):
                    phi.add_incoming(value, builder.block)
                builder.branch(header)
                builder.position_at_end(after)
                return k, phis

            start = [
                builder.load(vector_at(c_rows[r], v), align=align) for r in range(tile_rows) for v in range(row_vectors)
            ]
            zero = ir.Constant(vector, [ir.Constant(scalar, 0.0)] * lanes)
            sums = start + [zero] * (len(start) * (chains - 1))
            k = constant(0)
            if chains > 1:
                k, sums = loop(k, sums, chains, "tile.chains")
                per_set = len(start)
                total = sums[:per_set]
                for chain in range(1, chains):
                    chain_sums = sums[chain * per_set : (chain + 1) * per_set]
                    total = [builder.fadd(a, b) for a, b in zip(total, chain_sums, strict=True)]
                sums = total
            k, sums = loop(k, sums, 1, "tile.rest")
            for r in range(tile_rows):
                for v in range(row_vectors):
                    builder.store(sums[r * row_vectors + v], vector_at(c_rows[r], v), align=align)
            return context.get_dummy_value()

        return signature, codegen

    return tile


_tile8 = _tile_kernel(8, 1, prefetch=True)
_tile7 = _tile_kernel(7, 1, prefetch=True)
_tile6 = _tile_kernel(6, 1, prefetch=True)
_tile5 = _tile_kernel(5, 1, prefetch=True)
_tile4 = _tile_kernel(4, 1, prefetch=True)
_tile3 = _tile_kernel(3, 1)
_tile2 = _tile_kernel(2, 2)
_tile1 = _tile_kernel(1, 4)
# One or two rows across two panels at once: twice the independent accumulators and half
# the loop trips of one panel at a time.
_tile2_two_panels = _tile_kernel(2, 1, 2)
_tile1_two_panels = _tile_kernel(1, 2, 2)
# One row across three panels: with an odd count of full panels (a GRU's 3H columns at
# H = 32, say) the last one otherwise takes a pass of its own. Six accumulators already
# keep the multiply-adds busy, so one chain, which also fits AVX2's 16 registers.
_tile1_three_panels = _tile_kernel(1, 1, 3)


@jit_helper
def _tile_rows(c, c_offset, ldc, a, a_offset, lda, panel, panel_offset, count, rows):
    """Run the tile kernel over ``rows`` rows, in tiles of TILE_ROWS, the rest in one tile.

    Each tile streams the panel from cache once, and with few rows that stream is what a
    tile costs: 1 or 2 rows of a 256 x 768 panel took 9 us, 3 rows as a tile of 2 and one
    of 1 took 19 us, and 4 rows in one tile 16 us. So the rows left after the full tiles
    (up to TILE_ROWS - 1 of them) go through one tile of their own size.
    """
    done = 0
    while done < rows:
        left = rows - done
        c_at = c_offset + done * ldc
        a_at = a_offset + done * lda
        if TILE_ROWS >= 8 and left >= 8:
            _tile8(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 8
        elif TILE_ROWS >= 8 and left == 7:
            _tile7(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 7
        elif TILE_ROWS >= 8 and left == 6:
            _tile6(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 6
        elif TILE_ROWS >= 8 and left == 5:
            _tile5(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 5
        elif left >= 4:
            _tile4(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 4
        elif left == 3:
            _tile3(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 3
        elif left >= 2:
            _tile2(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 2
        else:
            _tile1(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, 0)
            done += 1


@jit_helper
def _few_rows_two_panels(c, c_offset, ldc, a, a_offset, lda, panel, panel_offset, count, rows, panel_stride):
    """``_tile_rows`` over two adjacent panels, for one or two rows."""
    done = 0
    while done < rows:
        c_at = c_offset + done * ldc
        a_at = a_offset + done * lda
        if rows - done >= 2:
            _tile2_two_panels(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, panel_stride)
            done += 2
        else:
            _tile1_two_panels(c, c_at, ldc, a, a_at, lda, panel, panel_offset, count, panel_stride)
            done += 1


@intrinsic
def _transpose_block(typingctx, dst, dst_offset, dst_ld, src, src_offset, src_ld):
    """dst[n, n] = src[n, n].T, for blocks of n = one vector register's values, in registers.

    Arguments: flat arrays of one dtype, element offsets and row strides; no bounds are
    checked. The n rows are loaded as vectors and transposed in log2(n) rounds, each
    interleaving row i with row i + n/2 (low halves, then high halves): after the rounds,
    row r holds column r. Packing W^T value by value ran at 5-8 GB/s; with this, 24-37
    GB/s for weights that stay in cache.
    """
    signature = types.void(dst, dst_offset, dst_ld, src, src_offset, src_ld)

    def codegen(context, builder, signature, args):
        arg_types = signature.args
        i64 = ir.IntType(64)
        index, data = _argument_readers(context, builder, signature, args)
        dtype = arg_types[0].dtype
        lanes = VECTOR_BYTES * 8 // dtype.bitwidth
        vector = ir.VectorType(context.get_data_type(dtype), lanes)
        align = dtype.bitwidth // 8
        src_base = builder.gep(data(3), [index(4)])
        dst_base = builder.gep(data(0), [index(1)])

        def row_pointer(base, ld, r):
            return builder.bitcast(builder.gep(base, [builder.mul(ld, ir.Constant(i64, r))]), vector.as_pointer())

        rows = [builder.load(row_pointer(src_base, index(5), r), align=align) for r in range(lanes)]
        half = lanes // 2
        mask_type = ir.VectorType(ir.IntType(32), lanes)
        low = ir.Constant(mask_type, [i for j in range(half) for i in (j, j + lanes)])
        high = ir.Constant(mask_type, [i for j in range(half, lanes) for i in (j, j + lanes)])
        for _ in range(lanes.bit_length() - 1):
            interleaved = []
            for r in range(half):
                interleaved.append(builder.shuffle_vector(rows[r], rows[r + half], low))
                interleaved.append(builder.shuffle_vector(rows[r], rows[r + half], high))
            rows = interleaved
        for r in range(lanes):
            builder.store(rows[r], row_pointer(dst_base, index(2), r), align=align)
        return context.get_dummy_value()

    return signature, codegen


def _pack(weight_pointer, inner, cols, transposed_source, packed_pointer, packed_size):
    weight = carray(weight_pointer, inner * cols)
    packed = carray(packed_pointer, packed_size)
    transposed_source = transposed_source != 0
    # Indices are unsigned so that numba drops its negative-index checks: 1.2 us against
    # 1.5 us for 64x64 with indexed views, 0.34 ms against 0.43 ms for 1024x1024.
    width = PANEL_BYTES // weight.itemsize
    lanes = VECTOR_BYTES // weight.itemsize
    zero = weight.dtype.type(0.0)
    for p in range((cols + width - 1) // width):
        first = p * width
        used = min(width, cols - first)
        base = p * inner * width
        for k in range(inner):
            for j in range(used, width):
                packed[np.uint64(base + k * width + j)] = zero
        if transposed_source:
            # Square blocks of one vector register's width are transposed in registers; only
            # the edges (inner or a panel's columns not a multiple of it) go value by value.
            block_inner = inner - inner % lanes
            block_used = used - used % lanes
            for k0 in range(0, block_inner, lanes):
                for j0 in range(0, block_used, lanes):
                    _transpose_block(packed, base + k0 * width + j0, width, weight, (first + j0) * inner + k0, inner)
            for j in range(used):
                source = (first + j) * inner
                target = base + j
                for k in range(block_inner if j < block_used else 0, inner):
                    packed[np.uint64(target + k * width)] = weight[np.uint64(source + k)]
        else:
            for k in range(inner):
                source = k * cols + first
                target = base + k * width
                for j in range(used):
                    packed[np.uint64(target + j)] = weight[np.uint64(source + j)]


def _product(
    src_pointer, src_ld, packed_pointer, packed_size, dst_pointer, dst_ld, rows, inner, cols, scratch_pointer,
    scratch_size,
):
    """dst[rows, :cols] += src[rows, :inner] @ B, panel by panel, the inner dimension in chunks."""
    src = carray(src_pointer, (rows - 1) * src_ld + inner)
    packed = carray(packed_pointer, packed_size)
    dst = carray(dst_pointer, (rows - 1) * dst_ld + cols)
    scratch = carray(scratch_pointer, scratch_size)

    width = PANEL_BYTES // src.itemsize
    full_panels = cols // width
    edge_cols = cols - full_panels * width
    panels = full_panels + (1 if edge_cols else 0)
    edge_at = full_panels * width
    zero = dst.dtype.type(0.0)
    for r in range(rows if edge_cols else 0):
        for c in range(width):
            scratch[r * width + c] = dst[edge_at + r * dst_ld + c] if c < edge_cols else zero
    first_pair = 0
    if rows == 1 and full_panels >= 3 and full_panels % 2 == 1:
        for k0 in range(0, inner, INNER_CHUNK):
            _tile1_three_panels(
                dst, 0, dst_ld, src, k0, src_ld, packed, k0 * width, min(INNER_CHUNK, inner - k0), inner * width
            )
        first_pair = 3
    paired = full_panels - (full_panels - first_pair) % 2 if rows < 3 else 0
    for p in range(first_pair, paired, 2):
        for k0 in range(0, inner, INNER_CHUNK):
            _few_rows_two_panels(
                dst, p * width, dst_ld, src, k0, src_ld, packed, (p * inner + k0) * width,
                min(INNER_CHUNK, inner - k0), rows, inner * width,
            )
    for p in range(paired, panels):
        target, target_offset, target_ld = dst, p * width, dst_ld
        if p == full_panels:
            target, target_offset, target_ld = scratch, 0, width
        for k0 in range(0, inner, INNER_CHUNK):
            _tile_rows(
                target, target_offset, target_ld, src, k0, src_ld, packed, (p * inner + k0) * width,
                min(INNER_CHUNK, inner - k0), rows,
            )
    for r in range(rows if edge_cols else 0):
        for c in range(edge_cols):
            dst[edge_at + r * dst_ld + c] = scratch[r * width + c]


_pack_compiled = export(
    "pack", _pack, weight_pointer=ARRAY, inner=INDEX, cols=INDEX, transposed_source=INDEX,
    packed_pointer=ARRAY, packed_size=INDEX,
)
_product_compiled = export(
    "packed_product", _product, src_pointer=ARRAY, src_ld=INDEX, packed_pointer=ARRAY, packed_size=INDEX,
    dst_pointer=ARRAY, dst_ld=INDEX, rows=INDEX, inner=INDEX, cols=INDEX, scratch_pointer=ARRAY,
    scratch_size=INDEX,
)


@jit_helper
def pack_bytes(like, weight, inner, cols, transposed_source):
    """B (inner x cols) in panels, as bytes of floats of ``like``'s dtype; B is ``weight``
    (inner, cols), or its transpose if ``transposed_source``, when ``weight`` is
    (cols, inner) as PyTorch stores W_ih and W_hh. ``weight`` may be bytes as well."""
    float_size = like.itemsize
    width = PANEL_BYTES // float_size
    count = (cols + width - 1) // width * inner * width
    packed = np.empty(count * float_size, dtype=np.uint8)
    _pack_compiled(like, weight.ctypes.data, inner, cols, transposed_source, packed.ctypes.data, count)
    return packed


@jit_helper
def packed_product(src, src_offset, src_ld, packed, dst, dst_offset, dst_ld, rows, inner, cols, scratch):
    """dst[rows, :cols] += src[rows, :inner] @ B, with B from ``pack_bytes`` (viewed as floats).

    ``scratch`` (``rows * PANEL_BYTES`` bytes) holds the last, partial panel: the tile
    kernel always writes whole panels, and the columns past ``cols`` belong to others.
    """
    if rows == 0:
        return
    size = src.itemsize
    _product_compiled(
        src, src.ctypes.data + src_offset * size, src_ld, packed.ctypes.data, packed.size,
        dst.ctypes.data + dst_offset * size, dst_ld, rows, inner, cols, scratch.ctypes.data, scratch.size,
    )


@register_jitable(inline="always")
def piece(count, pieces, index):
    """(first, length) of piece ``index`` when ``count`` items are cut into ``pieces`` near-equal ranges."""
    first = index * count // pieces
    return first, (index + 1) * count // pieces - first


@jit_helper
def pack_pair(like, weights, directions, inner, cols, transposed_source):
    """The packed weights of each direction (``pack_bytes``); one direction fills both slots."""
    first = pack_bytes(like, weights[0], inner, cols, transposed_source)
    second = pack_bytes(like, weights[1], inner, cols, transposed_source) if directions == 2 else first
    return first, second
