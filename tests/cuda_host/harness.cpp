// Host entry points for the band kernels of banded_mnn/_backends/cuda/,
// called from tests/test_cuda_kernels.py through ctypes.
#include "shim.h"
#include "../../banded_mnn/_backends/cuda/band_cholesky.cu"

// block == 0 selects the warp-per-system kernel (32 threads, one block per system).
template <typename T>
static void run(T* band, const long long* band_off, long long band_sj, long long band_st,
                long long n, long long bw, int do_factor, T* rhs, const long long* rhs_off,
                long long rhs_sj, long long rhs_sk, long long nrhs, int* info, long long nsys,
                unsigned block) {
    if (block == 0) {
        launch((unsigned)nsys, BAND_WARP, [&] {
            band_factor_solve_warp<T>(band, band_off, band_sj, band_st, n, bw, do_factor, rhs,
                                      rhs_off, rhs_sj, rhs_sk, nrhs, info, nsys);
        });
        return;
    }
    const unsigned grid = (unsigned)((nsys + block - 1) / block);
    launch(grid, block, [&] {
        band_factor_solve<T>(band, band_off, band_sj, band_st, n, bw, do_factor, rhs, rhs_off,
                             rhs_sj, rhs_sk, nrhs, info, nsys);
    });
}

extern "C" {
void band_factor_solve_f64(double* band, const long long* band_off, long long band_sj,
                           long long band_st, long long n, long long bw, int do_factor,
                           double* rhs, const long long* rhs_off, long long rhs_sj,
                           long long rhs_sk, long long nrhs, int* info, long long nsys,
                           unsigned block) {
    run<double>(band, band_off, band_sj, band_st, n, bw, do_factor, rhs, rhs_off, rhs_sj, rhs_sk,
                nrhs, info, nsys, block);
}
void band_factor_solve_f32(float* band, const long long* band_off, long long band_sj,
                           long long band_st, long long n, long long bw, int do_factor,
                           float* rhs, const long long* rhs_off, long long rhs_sj,
                           long long rhs_sk, long long nrhs, int* info, long long nsys,
                           unsigned block) {
    run<float>(band, band_off, band_sj, band_st, n, bw, do_factor, rhs, rhs_off, rhs_sj, rhs_sk,
               nrhs, info, nsys, block);
}
}
