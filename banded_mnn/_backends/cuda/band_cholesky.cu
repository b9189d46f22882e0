// Batched band Cholesky factorisation and solve on the GPU, for the two
// regimes S-MNN meets, plus the strided copy that moves operands between the
// caller's arrays and the kernels' workspaces.  Compiled at run time by NVRTC
// (banded_mnn/_backends/_cupy.py), one module per (dtype, bandwidth).
//
//   band_copy<T>                  strided batch copy of (rows, cols) cores,
//                                 with the band mask and a non-finite probe
//   band_factor_solve<T, BW>      one thread per system (many short systems;
//                                 workspace interleaved by system: coalesced)
//   band_factor_solve_warp<T, BW> one warp (a 32-thread block) per system (few
//                                 long systems; workspace contiguous per system),
//                                 any bandwidth
//   band_factor_window<T, BW>     the same regime for 1 <= BW < 32 with the band
//   band_substitute_window<T, BW> window in registers: the factorisation (with
//                                 the forward substitution of one right-hand
//                                 side fused) and the substitutions, a warp per
//                                 system or per (system, right-hand side)
//
// Operands are addressed like the CPU kernels' (banded_mnn/_strided.py): a
// flat buffer, one element offset per system and two element strides.  The
// band is seen as (j, t) -> A[j + t, j] (StridedBatch.band_view), so both
// LAPACK forms map to it.
//
// The algorithm is the CPU cores' (banded_mnn/_backends/_band_kernels.py) and
// the Numba CUDA kernels' (_numba_cuda.py): right-looking band Cholesky with
// the forward substitution fused, then the backward substitution.  info[i]
// receives LAPACK's 1-based order of the first leading minor that is not
// positive definite (an infinite pivot fails too); the scatter (band_copy
// with the status) makes a failed system's outputs NaN.
//
// BW > 0 fixes the half-bandwidth at compile time (the loops over the band
// then have constant trip counts in the interior of the matrix); BW == 0
// takes it from the argument.
//
// Verified without a GPU (tests/test_cuda_kernels.py): compiled by nvcc for
// sm_80 and sm_90 (resource report: no spills) and by NVRTC exactly as the
// CuPy backend compiles it, and compiled as host C++ with the tests' shim
// (tests/cuda_host/), which runs every CUDA thread as a host thread, and
// compared with SciPy through the public functions.

template <typename T>
__device__ inline T band_nan();

template <>
__device__ inline float band_nan<float>() { return __int_as_float(0x7fc00000); }

template <>
__device__ inline double band_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

template <typename T>
__device__ inline bool band_pivot_ok(T d) {
    return d > T(0) && isfinite(d);  // false for NaN and inf (LAPACK would accept inf)
}

// Copy core (r, c) of every system from src to dst, one thread per element.
// mask: 0 copies every cell; 1 (gathering a band, rows = n) writes 0 to the
// cells (j, t) with j + t >= rows, which lie outside the matrix, without
// reading them; 2 (scattering a band) leaves those cells of dst alone.
// system_fastest orders the threads so that writes are coalesced for a
// destination interleaved by system (otherwise for one contiguous per system).
// dst == nullptr only probes.  A non-finite value read sets *nonfinite
// (when non-null).  With status non-null (scattering results), a system with
// status[i] != 0 failed: NaN is written instead of its values, so a failed
// factor or solution cannot be used by mistake.
template <typename T>
__global__ void band_copy(
    const T* src, const long long* src_off, long long src_r, long long src_c,
    T* dst, const long long* dst_off, long long dst_r, long long dst_c,
    long long rows, long long cols, int mask, int system_fastest,
    int* nonfinite, const int* status, long long nsys)
{
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= nsys * rows * cols) return;
    long long i, r, c;
    if (system_fastest) {
        i = e % nsys;
        c = (e / nsys) % cols;
        r = e / (nsys * cols);
    } else {
        c = e % cols;
        r = (e / cols) % rows;
        i = e / (rows * cols);
    }
    const bool outside = mask != 0 && r + c >= rows;
    if (outside) {
        if (mask == 1 && dst != nullptr) dst[dst_off[i] + r * dst_r + c * dst_c] = T(0);
        return;
    }
    if (status != nullptr && status[i] != 0) {
        dst[dst_off[i] + r * dst_r + c * dst_c] = band_nan<T>();
        return;
    }
    const T value = src[src_off[i] + r * src_r + c * src_c];
    if (nonfinite != nullptr && !isfinite(value)) *nonfinite = 1;
    if (dst != nullptr) dst[dst_off[i] + r * dst_r + c * dst_c] = value;
}

template <typename T, int BW>
__global__ void band_factor_solve(
    T* band, const long long* band_off, long long band_sj, long long band_st,
    long long n, long long bw_arg, int do_factor,
    T* rhs, const long long* rhs_off, long long rhs_sj, long long rhs_sk, long long nrhs,
    int* info, long long nsys)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nsys) return;
    const long long bw = BW > 0 ? BW : bw_arg;
    T* a = band + band_off[i];
    T* y = rhs + (nrhs > 0 ? rhs_off[i] : 0);
#define A(j, t) a[(j) * band_sj + (t) * band_st]
#define Y(j, k) y[(j) * rhs_sj + (k) * rhs_sk]
    int failed = 0;
    for (long long j = 0; j < n; ++j) {
        const long long m = (bw < n - 1 - j) ? bw : n - 1 - j;
        T d = A(j, 0);
        if (do_factor) {
            if (!band_pivot_ok(d)) {
                if (!failed) failed = (int)(j + 1);
                d = T(1);
            } else {
                d = sqrt(d);
            }
            A(j, 0) = d;
        }
        const T r = T(1) / d;
        if (do_factor) {
            for (long long t = 1; t <= m; ++t) A(j, t) *= r;
            // Rank-1 update of the trailing triangle: A~[j+s+q, j+s] -= L[j+s+q, j] L[j+s, j].
            for (long long s = 1; s <= m; ++s) {
                const T ls = A(j, s);
                for (long long q = 0; q <= m - s; ++q) A(j + s, q) -= A(j, s + q) * ls;
            }
        }
        for (long long k = 0; k < nrhs; ++k) {  // forward substitution, column j
            const T yj = Y(j, k) * r;
            Y(j, k) = yj;
            for (long long t = 1; t <= m; ++t) Y(j + t, k) -= A(j, t) * yj;
        }
    }
    for (long long j = n - 1; j >= 0 && nrhs > 0; --j) {  // backward substitution
        const long long m = (bw < n - 1 - j) ? bw : n - 1 - j;
        for (long long k = 0; k < nrhs; ++k) {
            T acc = Y(j, k);
            for (long long t = 1; t <= m; ++t) acc -= A(j, t) * Y(j + t, k);
            Y(j, k) = acc / A(j, 0);
        }
    }
    info[i] = failed;  // (the scatter writes NaN for a failed system)
#undef A
#undef Y
}

// Few long systems: one block of BAND_WARP threads per system.  The same
// algorithm with the work of each column spread over the threads: the scaling
// of column j, the rank-1 update of the trailing triangle (each of its columns
// dealt round the threads), the forward substitution's
// updates, and the backward substitution's dot products (partial sums in
// shared memory, added up by every thread).  Thread 0 computes the pivots.
constexpr int BAND_WARP = 32;

template <typename T, int BW>
__global__ void band_factor_solve_warp(
    T* band, const long long* band_off, long long band_sj, long long band_st,
    long long n, long long bw_arg, int do_factor,
    T* rhs, const long long* rhs_off, long long rhs_sj, long long rhs_sk, long long nrhs,
    int* info, long long nsys)
{
    const long long i = blockIdx.x;
    const int lane = threadIdx.x;
    if (i >= nsys) return;  // the whole block leaves together
    const long long bw = BW > 0 ? BW : bw_arg;
    __shared__ T s_part[BAND_WARP];
    __shared__ T s_recip;
    __shared__ int s_failed;
    T* a = band + band_off[i];
    T* y = rhs + (nrhs > 0 ? rhs_off[i] : 0);
#define A(j, t) a[(j) * band_sj + (t) * band_st]
#define Y(j, k) y[(j) * rhs_sj + (k) * rhs_sk]
    if (lane == 0) s_failed = 0;
    for (long long j = 0; j < n; ++j) {
        const long long m = (bw < n - 1 - j) ? bw : n - 1 - j;
        if (lane == 0) {
            T d = A(j, 0);
            if (do_factor) {
                if (!band_pivot_ok(d)) {
                    if (!s_failed) s_failed = (int)(j + 1);
                    d = T(1);
                } else {
                    d = sqrt(d);
                }
                A(j, 0) = d;
            }
            s_recip = T(1) / d;
        }
        __syncthreads();
        const T r = s_recip;
        if (do_factor) {
            for (long long t = 1 + lane; t <= m; t += BAND_WARP) A(j, t) *= r;
            __syncthreads();
            // Column s of the trailing triangle, cells q = 0 .. m - s, dealt
            // round the threads (no division per cell).
            for (long long s = 1; s <= m; ++s) {
                const T ls = A(j, s);
                for (long long q = lane; q <= m - s; q += BAND_WARP) A(j + s, q) -= A(j, s + q) * ls;
            }
        }
        for (long long k = 0; k < nrhs; ++k) {
            const T yj = Y(j, k) * r;  // every thread reads Y(j, k) ...
            __syncthreads();
            if (lane == 0) Y(j, k) = yj;  // ... before thread 0 overwrites it
            for (long long t = 1 + lane; t <= m; t += BAND_WARP) Y(j + t, k) -= A(j, t) * yj;
        }
        __syncthreads();
    }
    for (long long j = n - 1; j >= 0 && nrhs > 0; --j) {
        const long long m = (bw < n - 1 - j) ? bw : n - 1 - j;
        for (long long k = 0; k < nrhs; ++k) {
            T part = T(0);
            for (long long t = 1 + lane; t <= m; t += BAND_WARP) part += A(j, t) * Y(j + t, k);
            s_part[lane] = part;
            __syncthreads();
            T acc = Y(j, k);
            for (int l = 0; l < BAND_WARP; ++l) acc -= s_part[l];
            acc /= A(j, 0);
            __syncthreads();  // s_part and Y(j, k) are read by all before being written
            // Y(j, k) is read again only by thread 0 itself (t = 1 + lane) or
            // after at least two more barriers.
            if (lane == 0) Y(j, k) = acc;
        }
    }
    if (lane == 0) info[i] = s_failed;  // (the scatter writes NaN for a failed system)
#undef A
#undef Y
}

// ---------------------------------------------------------------------------
// The register window (few long systems, 1 <= BW < 32).
//
// A warp per system; lane s holds diagonal s of the band: cell (C + s, C) of
// the trailing matrix for the W = BW + 1 columns C = j .. j + BW of the
// window, in register x[C % W].  Indexed by column, every lane finds the
// pivot column j in the same register, and a column entering the window is
// one load (lane s reads A[C + s, C]: coalesced where the band's columns are
// contiguous, as in the workspace; the driver gathers other layouts).  The
// column loop is unrolled W times, so C % W is a constant and the window
// never leaves the registers.  Step j of the right-looking band Cholesky is
//
//   d = sqrt(A~[j, j]),  l_s = L[j + s, j] = A~[j + s, j] / d  (lane s),
//   A~[j + c + s, j + c] -= l_{c + s} l_c    for 1 <= c <= BW, c + s <= BW,
//
// with l_{c + s} brought from lane c + s by __shfl_down_sync and l_c read
// from shared memory (one store per lane, 16-byte broadcast reads); every
// lane computes the next pivot from l_1 and the diagonal cell it received
// before the update, so the chain from one square root to the next holds no
// shuffle.  Then column j
// leaves (its factor is stored, one coalesced store) and column j + W,
// loaded W steps earlier, takes its register.  Same operations as
// band_factor_solve, in the same order per cell.
//
// The substitutions keep a window of the right-hand side: lane s holds
// ybar_{j + s} going forward (ybar_{j - s} going back), updated by an axpy
// with the factor's column (row going back) and moved one lane per step by
// __shfl_down_sync.
//
// Both kernels run one warp per 32-thread block.

enum : unsigned { FULL_WARP = 0xffffffffu };  // every lane takes part in the shuffles

// The window's width: BW + 1 where the band fits in a warp, else 1 (the
// kernels are then never launched; the instantiation only has to compile).
template <int BW>
constexpr int window_width = (BW >= 1 && BW < BAND_WARP) ? BW + 1 : 1;

// The right-hand side's window moves one lane down (lane s takes lane s + 1's
// row); the row entering it, held by lane p in `ahead`, goes to the last lane.
template <typename T>
__device__ inline T window_step(T ybar, T ahead, int p, int s, int W) {
    const T incoming = __shfl_sync(FULL_WARP, ahead, p);
    const T moved = __shfl_down_sync(FULL_WARP, ybar, 1);
    return s == W - 1 ? incoming : moved;
}

// One value per lane, 16-byte aligned, so that a copy from shared memory is
// made of 16-byte loads.
template <typename T>
struct __align__(16) Lanes {
    T t[BAND_WARP];
};

// Factor each system: read the band from src (the caller's strided array,
// or the workspace itself), write L[j + s, j] to A(j, s) of band; with
// forward != 0 also the forward substitution of its right-hand side, column 0
// of rhs (y_j in Y(j)), fused.  info as band_factor_solve's.  Reading the
// caller's array directly saves the gather's pass over the band; src may be
// band (in place: each column is read 2W steps before its factor is written).
template <typename T, int BW>
__global__ void band_factor_window(
    const T* src, const long long* src_off, long long src_sj, long long src_st,
    T* band, const long long* band_off, long long band_sj, long long band_st,
    long long n, T* rhs, const long long* rhs_off, long long rhs_sj, int forward,
    int* info, long long nsys)
{
    constexpr int W = window_width<BW>;
    const long long i = blockIdx.x;
    const int s = threadIdx.x;  // the lane: diagonal s
    if (i >= nsys) return;      // the whole warp leaves together
    const T* a_in = src + src_off[i];
    T* a = band + band_off[i];
    T* y = forward ? rhs + rhs_off[i] : nullptr;
#define A(j, t) a[(j) * band_sj + (t) * band_st]
#define Y(j) y[(j) * rhs_sj]
    // Lane s's cell of column c of the input (0 outside the band and below
    // row n - 1, which are never read).
    auto column = [&](long long c) -> T {
        return (s < W && c + s < n) ? a_in[c * src_sj + s * src_st] : T(0);
    };
    // Row r of the right-hand side for the lanes that load it (0 past the end).
    auto rhs_row = [&](long long r) -> T { return (forward && s < W && r < n) ? Y(r) : T(0); };
    __shared__ Lanes<T> s_l;
    T x[W], next[W];
#pragma unroll
    for (int q = 0; q < W; ++q) {
        x[q] = column(q);
        next[q] = column(q + W);
    }
    T ybar = rhs_row(s);       // ybar_{j + s}
    T ahead = rhs_row(W + s);  // row j0 + W + s: enters lane BW at step j0 + s
    int failed = 0;
    T pivot = __shfl_sync(FULL_WARP, x[0], 0);  // A~[j, j], in every lane
    for (long long j0 = 0; j0 < n; j0 += W) {
        const T ahead_next = rhs_row(j0 + 2 * W + s);
#pragma unroll
        for (int p = 0; p < W; ++p) {
            const long long j = j0 + p;
            if (j >= n) break;  // uniform over the warp
            const T d2 = pivot;
            // A~[j + 1, j + 1] before this step's update, from lane 0: off the
            // chain from one square root to the next (see below).
            const T diagonal = __shfl_sync(FULL_WARP, x[(p + 1) % W], 0);
            T d;
            if (band_pivot_ok(d2)) {
                d = sqrt(d2);
            } else {
                if (!failed) failed = (int)(j + 1);
                d = T(1);
            }
            const T r = T(1) / d;
            const T l = s == 0 ? d : x[p] * r;  // L[j + s, j] (0 for s >= W)
            if (s < W && j + s < n) A(j, s) = l;
            s_l.t[s] = l;
            __syncwarp();
            const Lanes<T> across = s_l;  // l_0 .. l_31: 16-byte broadcast loads
#pragma unroll
            for (int c = 1; c < W; ++c) {
                const T below = __shfl_down_sync(FULL_WARP, l, c);  // l_{c + s}
                if (s + c < W) x[(p + c) % W] -= below * across.t[c];
            }
            // The next pivot, as lane 0's update of it (below = across.t[1] =
            // l_1 there), in every lane without a shuffle after the update.
            pivot = diagonal - across.t[1] * across.t[1];
            if (forward) {  // uniform
                const T yj = __shfl_sync(FULL_WARP, ybar, 0) * r;
                if (s == 0) Y(j) = yj;
                ybar -= l * yj;
                ybar = window_step(ybar, ahead, p, s, W);  // row j + W enters
            }
            x[p] = next[p];  // column j + W takes column j's register
            next[p] = column(j + 2 * W);
            __syncwarp();  // every lane has read s_l before the next step writes it
        }
        ahead = ahead_next;
    }
    if (s == 0) info[i] = failed;  // (the scatter writes NaN for a failed system)
#undef A
#undef Y
}

// Substitute with a factor from band_factor_window (or any band Cholesky
// factor): a warp per (system, right-hand side column), forward (if forward
// != 0) then backward, in place in rhs.
template <typename T, int BW>
__global__ void band_substitute_window(
    const T* band, const long long* band_off, long long band_sj, long long band_st,
    long long n, T* rhs, const long long* rhs_off, long long rhs_sj, long long rhs_sk,
    long long nrhs, int forward, long long nsys)
{
    constexpr int W = window_width<BW>;
    const long long g = blockIdx.x;
    const int s = threadIdx.x;
    if (nrhs <= 0 || g >= nsys * nrhs) return;  // the whole warp leaves together
    const long long i = g / nrhs, k = g % nrhs;
    const T* a = band + band_off[i];
    T* y = rhs + rhs_off[i] + k * rhs_sk;
#define A(j, t) a[(j) * band_sj + (t) * band_st]
#define Y(j) y[(j) * rhs_sj]
    auto rhs_row = [&](long long r) -> T { return (s < W && r >= 0 && r < n) ? Y(r) : T(0); };
    T ring[W];  // the factor's columns (rows going back), loaded W steps ahead
    if (forward) {
        // Column j: lane s needs L[j + s, j] = A(j, s).
        auto column = [&](long long c) -> T { return (s < W && c + s < n) ? A(c, s) : T(0); };
#pragma unroll
        for (int q = 0; q < W; ++q) ring[q] = column(q);
        T ybar = rhs_row(s);
        T ahead = rhs_row(W + s);
        __syncwarp();  // (every lane's reads of y before lane 0 writes)
        for (long long j0 = 0; j0 < n; j0 += W) {
            const T ahead_next = rhs_row(j0 + 2 * W + s);
#pragma unroll
            for (int p = 0; p < W; ++p) {
                const long long j = j0 + p;
                if (j >= n) break;
                const T l = ring[p];
                ring[p] = column(j + W);
                const T yj = __shfl_sync(FULL_WARP, ybar, 0) * (T(1) / __shfl_sync(FULL_WARP, l, 0));
                if (s == 0) Y(j) = yj;
                ybar -= l * yj;
                ybar = window_step(ybar, ahead, p, s, W);  // row j + W enters
            }
            ahead = ahead_next;
            __syncwarp();  // a block's reads of y (rows j0 + 2W ..) before their writes
        }
        // (and lane 0's stores of y are seen by the lanes that reload them)
    }
    // Backward, j = n - 1 .. 0: lane s needs L[j, j - s] = A(j - s, s) and
    // holds ybar_{j - s}; x_j = ybar_j / L[j, j].
    auto row = [&](long long r) -> T { return (s < W && r - s >= 0 && r < n) ? A(r - s, s) : T(0); };
#pragma unroll
    for (int q = 0; q < W; ++q) ring[q] = row(n - 1 - q);
    T ybar = rhs_row(n - 1 - s);
    T ahead = rhs_row(n - 1 - W - s);
    __syncwarp();  // (every lane's reads of y before lane 0 writes)
    for (long long k0 = 0; k0 < n; k0 += W) {
        const T ahead_next = rhs_row(n - 1 - k0 - 2 * W - s);
#pragma unroll
        for (int p = 0; p < W; ++p) {
            const long long j = n - 1 - (k0 + p);
            if (j < 0) break;
            const T l = ring[p];
            ring[p] = row(j - W);
            const T xj = __shfl_sync(FULL_WARP, ybar, 0) / __shfl_sync(FULL_WARP, l, 0);
            if (s == 0) Y(j) = xj;
            ybar -= l * xj;
            ybar = window_step(ybar, ahead, p, s, W);  // row j - W enters
        }
        ahead = ahead_next;
        __syncwarp();  // a block's reads of y (rows j - 2W ..) before their writes
    }
#undef A
#undef Y
}
