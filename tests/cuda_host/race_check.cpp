// Test-only: runs the warp-per-system kernels of band_cholesky.cu (the
// general one and the register-window pair) under ThreadSanitizer (built with
// -fsanitize=thread by tests/test_cuda_kernels.py) and compares them with the
// one-thread-per-system kernel.  Every CUDA thread
// is a host thread (shim.h), so a missing __syncthreads between a write and a
// read of another thread shows up as a reported data race.
#define SHIM_RELAXED_SHUFFLES  // the shuffles order nothing (see shim.h)
#include "shim.h"
#include "../../banded_mnn/_backends/cuda/band_cholesky.cu"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>

// The window kernels for a bandwidth fixed at compile time, as the backend launches them.
template <int BW>
int run_window(std::vector<double>& band, std::vector<double>& rhs, long long n, long long nrhs,
               int do_factor) {
    const long long width = BW + 1, offset = 0;
    const bool fused = do_factor && nrhs == 1;
    int info = 0;
    if (do_factor)
        launch(1, 32, true, [&] {
            band_factor_window<double, BW>(band.data(), &offset, width, 1, band.data(), &offset,
                                           width, 1, n,
                                           fused ? rhs.data() : nullptr, &offset, nrhs,
                                           fused ? 1 : 0, &info, 1);
        });
    if (nrhs > 0)
        launch((unsigned)nrhs, 32, true, [&] {
            band_substitute_window<double, BW>(band.data(), &offset, width, 1, n, rhs.data(),
                                               &offset, nrhs, 1, nrhs, fused ? 0 : 1, 1);
        });
    return info;
}

int main() {
    // (n, bw, nrhs, do_factor); the window kernels run for bw = 3, 5, 23 and 31
    const long long cases[][4] = {
        {50, 40, 2, 1}, {37, 5, 1, 1}, {70, 33, 3, 0}, {9, 3, 0, 1},  {61, 23, 1, 1},
        {40, 5, 2, 1},  {30, 3, 2, 0}, {1, 3, 1, 1},   {3, 3, 2, 1},  {4, 3, 1, 0},
        {5, 3, 0, 1},   {6, 5, 1, 0},  {66, 31, 1, 1}, {33, 31, 2, 0}, {32, 31, 0, 1},
        {31, 31, 1, 1}};
    std::mt19937 generator(1);
    std::uniform_real_distribution<double> uniform(-1, 1);
    double worst = 0;
    for (const auto& c : cases) {
        const long long n = c[0], bw = c[1], nrhs = c[2];
        const int do_factor = (int)c[3];
        const long long width = bw + 1;
        std::vector<double> band(n * width), rhs(std::max(n * nrhs, 1LL));
        for (long long j = 0; j < n; ++j)
            for (long long t = 0; t < width; ++t)
                band[j * width + t] = t == 0 ? 4.0 * width : (j + t < n ? uniform(generator) : 0);
        if (!do_factor) {  // a valid factor to solve with
            long long offset = 0;
            int status = 0;
            launch(1, 1, false, [&] {
                band_factor_solve<double, 0>(band.data(), &offset, width, 1, n, bw, 1, rhs.data(),
                                             &offset, 1, 1, 0, &status, 1);
            });
        }
        for (auto& v : rhs) v = uniform(generator);
        const std::vector<double> band0 = band, rhs0 = rhs;
        std::vector<double> band2 = band, rhs2 = rhs;
        long long offset = 0;
        int info = -1, info2 = -1;
        launch(1, 32, true, [&] {
            band_factor_solve_warp<double, 0>(band.data(), &offset, width, 1, n, bw, do_factor,
                                              rhs.data(), &offset, nrhs, 1, nrhs, &info, 1);
        });
        launch(1, 1, false, [&] {
            band_factor_solve<double, 0>(band2.data(), &offset, width, 1, n, bw, do_factor,
                                         rhs2.data(), &offset, nrhs, 1, nrhs, &info2, 1);
        });
        if (bw == 3 || bw == 5 || bw == 23 || bw == 31) {
            std::vector<double> band3 = band0, rhs3 = rhs0;
            const int info3 = bw == 3    ? run_window<3>(band3, rhs3, n, nrhs, do_factor)
                              : bw == 5  ? run_window<5>(band3, rhs3, n, nrhs, do_factor)
                              : bw == 23 ? run_window<23>(band3, rhs3, n, nrhs, do_factor)
                                         : run_window<31>(band3, rhs3, n, nrhs, do_factor);
            for (size_t k = 0; k < rhs.size(); ++k)
                worst = std::max(worst, std::abs(rhs3[k] - rhs2[k]));
            for (size_t k = 0; k < band.size(); ++k)
                worst = std::max(worst, std::abs(band3[k] - band2[k]));
            if (do_factor && info3 != info2) {
                std::printf("window info differs: %d %d\n", info3, info2);
                return 1;
            }
            if (band3 != band2) {  // same operations per cell: the same factor, bit for bit
                std::printf("window factor differs (n %lld, bw %lld)\n", n, bw);
                return 1;
            }
        }
        for (size_t k = 0; k < rhs.size(); ++k) worst = std::max(worst, std::abs(rhs[k] - rhs2[k]));
        for (size_t k = 0; k < band.size(); ++k)
            worst = std::max(worst, std::abs(band[k] - band2[k]));
        if (info != info2) {
            std::printf("info differs: %d %d\n", info, info2);
            return 1;
        }
    }
    std::printf("max difference %g\n", worst);
    return worst < 1e-10 ? 0 : 1;
}
