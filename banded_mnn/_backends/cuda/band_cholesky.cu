// Batched band Cholesky factorisation and solve, for the two regimes S-MNN
// meets: band_factor_solve (one thread per system: many short systems) and
// band_factor_solve_warp (one warp per system: few long ones).
//
// The operands are addressed like the CPU kernels' (banded_mnn/_strided.py):
// a flat buffer, one element offset per system and two element strides, so
// any CuPy strides work without a copy.  The band is seen as (j, t) ->
// A[j + t, j] (StridedBatch.band_view): both LAPACK forms map to it.  With
// the systems' batch axis innermost in memory (the layout callers are asked
// to prefer) neighbouring threads read neighbouring elements: coalesced.
//
// The algorithm is the CPU cores' (banded_mnn/_backends/_band_kernels.py):
// right-looking band Cholesky with the forward substitution fused, then the
// backward substitution; info[i] receives LAPACK's 1-based order of the first
// leading minor that is not positive definite (an infinite pivot fails too),
// and a failed system's outputs are NaN.
//
// Status: verified without a GPU -- compiled by nvcc for sm_80 and sm_90 in
// the tests (resource report: no spills), and compiled as host C++ with the
// tests' shim (tests/cuda_host/), which runs each CUDA thread as a host
// thread, and compared with SciPy (tests/test_cuda_kernels.py).  Not yet
// wired to a Python backend: the CuPy backend (NVRTC compilation per dtype,
// launch on the caller's stream) is the next step of the GPU work.

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

template <typename T>
__global__ void band_factor_solve(
    T* band, const long long* band_off, long long band_sj, long long band_st,
    long long n, long long bw, int do_factor,
    T* rhs, const long long* rhs_off, long long rhs_sj, long long rhs_sk, long long nrhs,
    int* info, long long nsys)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nsys) return;
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
    info[i] = failed;
    if (failed) {
        const T nan = band_nan<T>();
        for (long long j = 0; j < n; ++j) {
            const long long m = (bw < n - 1 - j) ? bw : n - 1 - j;
            if (do_factor)
                for (long long t = 0; t <= m; ++t) A(j, t) = nan;
            for (long long k = 0; k < nrhs; ++k) Y(j, k) = nan;
        }
    }
#undef A
#undef Y
}

// Few long systems: one block of 32 threads (a warp) per system.  The same
// algorithm, with the work of each column spread over the threads: the
// scaling of column j, the rank-1 update of the trailing triangle (one row of
// it at a time, its entries across the threads), the forward substitution's
// updates, and the backward substitution's dot products (summed in shared
// memory).  Thread 0 computes the pivots.  Launch with blockDim.x == 32 and
// one block per system.
constexpr int BAND_WARP = 32;

template <typename T>
__global__ void band_factor_solve_warp(
    T* band, const long long* band_off, long long band_sj, long long band_st,
    long long n, long long bw, int do_factor,
    T* rhs, const long long* rhs_off, long long rhs_sj, long long rhs_sk, long long nrhs,
    int* info, long long nsys)
{
    const long long i = blockIdx.x;
    const int lane = threadIdx.x;
    if (i >= nsys) return;
    __shared__ T s_value[BAND_WARP];
    __shared__ int s_failed;
    T* a = band + band_off[i];
    T* y = rhs + (nrhs > 0 ? rhs_off[i] : 0);
#define A(j, t) a[(j) * band_sj + (t) * band_st]
#define Y(j, k) y[(j) * rhs_sj + (k) * rhs_sk]
    if (lane == 0) s_failed = 0;
    __syncthreads();
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
            s_value[0] = T(1) / d;
        }
        __syncthreads();
        const T r = s_value[0];
        if (do_factor) {
            for (long long t = 1 + lane; t <= m; t += BAND_WARP) A(j, t) *= r;
            __syncthreads();
            for (long long s = 1; s <= m; ++s) {
                const T ls = A(j, s);
                for (long long q = lane; q <= m - s; q += BAND_WARP)
                    A(j + s, q) -= A(j, s + q) * ls;
            }
        }
        for (long long k = 0; k < nrhs; ++k) {
            __syncthreads();
            if (lane == 0) Y(j, k) *= r;
            __syncthreads();
            const T yj = Y(j, k);
            for (long long t = 1 + lane; t <= m; t += BAND_WARP) Y(j + t, k) -= A(j, t) * yj;
        }
        __syncthreads();
    }
    for (long long j = n - 1; j >= 0 && nrhs > 0; --j) {
        const long long m = (bw < n - 1 - j) ? bw : n - 1 - j;
        for (long long k = 0; k < nrhs; ++k) {
            T part = T(0);
            for (long long t = 1 + lane; t <= m; t += BAND_WARP) part += A(j, t) * Y(j + t, k);
            s_value[lane] = part;
            __syncthreads();
            if (lane == 0) {
                T acc = Y(j, k);
                for (int l = 0; l < BAND_WARP; ++l) acc -= s_value[l];
                Y(j, k) = acc / A(j, 0);
            }
            __syncthreads();
        }
    }
    const int failed = s_failed;
    if (lane == 0) info[i] = failed;
    if (failed) {
        const T nan = band_nan<T>();
        for (long long j = lane; j < n; j += BAND_WARP) {
            const long long m = (bw < n - 1 - j) ? bw : n - 1 - j;
            if (do_factor)
                for (long long t = 0; t <= m; ++t) A(j, t) = nan;
            for (long long k = 0; k < nrhs; ++k) Y(j, k) = nan;
        }
    }
#undef A
#undef Y
}
