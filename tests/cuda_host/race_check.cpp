// Test-only: runs the warp-per-system kernel of band_cholesky.cu under
// ThreadSanitizer (built with -fsanitize=thread by tests/test_cuda_kernels.py)
// and compares it with the one-thread-per-system kernel.  Every CUDA thread
// is a host thread (shim.h), so a missing __syncthreads between a write and a
// read of another thread shows up as a reported data race.
#include "shim.h"
#include "../../banded_mnn/_backends/cuda/band_cholesky.cu"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>

int main() {
    const long long cases[][4] = {{50, 40, 2, 1}, {37, 5, 1, 1}, {70, 33, 3, 0}, {9, 3, 0, 1}};
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
