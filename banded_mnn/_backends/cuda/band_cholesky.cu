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
//                                 long systems; workspace contiguous per system)
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
// of column j, the rank-1 update of the whole trailing triangle (its
// m (m + 1) / 2 cells dealt round the threads), the forward substitution's
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
            // Cell (s, q) of the triangle, 1 <= s <= m, 0 <= q <= m - s, is
            // number e = (s - 1) m + q of an m x m square; the rest is skipped.
            for (long long e = lane; e < m * m; e += BAND_WARP) {
                const long long s = e / m + 1, q = e % m;
                if (q <= m - s) A(j + s, q) -= A(j, s + q) * A(j, s);
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
