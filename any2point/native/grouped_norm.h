/* Body of the grouped batch norm kernels, included once per floating type (instantiate.h) with
 * REAL (the type), NAME(f) (the exported name) and SQRT defined.
 *
 * Rows x (R x D) each with a group id (R, values < Gr), normalised per group and channel with
 * that group's batch statistics, then scaled and shifted by the group's weight and bias:
 *     y = (x - mean_g) / sqrt(var_g + eps) * weight_g + bias_g     (var: biased, as in training)
 * Sums over rows are made per thread and added in thread order (the same bits on every run
 * with the same number of threads). */

/* Per-group sums over rows of an expression of (r, d) into out (Gr x D): each thread sums into
 * its own slice of partial (threads x Gr x D), then the slices are added in thread order. */
#define GROUP_SUMS(out, expression)                                                               \
    do {                                                                                          \
        for (size_t i = 0; i < (size_t)threads * (size_t)(Gr * D); i++) partial[i] = 0;          \
        _Pragma("omp parallel num_threads(threads)") {                                            \
            REAL *own = partial + (size_t)THREAD_ID() * (size_t)(Gr * D);                         \
            _Pragma("omp for schedule(static)") for (int64_t r = 0; r < R; r++) {                 \
                REAL *sums = own + group[r] * D;                                                  \
                _Pragma("omp simd") for (int64_t d = 0; d < D; d++) sums[d] += (expression);      \
            }                                                                                     \
        }                                                                                         \
        for (int64_t i = 0; i < Gr * D; i++) out[i] = 0;                                          \
        for (int me = 0; me < threads; me++)                                                      \
            for (int64_t i = 0; i < Gr * D; i++) out[i] += partial[(size_t)me * (size_t)(Gr * D) + i]; \
    } while (0)

/* Room for the per-thread sums and two (Gr x D) tables; NULL when out of memory. */
static REAL *NAME(grouped_norm_buffers)(int64_t Gr, int64_t D, int *threads) {
    THREADS(*threads);
    return malloc(sizeof(REAL) * ((size_t)(*threads) + 2) * (size_t)(Gr * D > 0 ? Gr * D : 1));
}

/* y, and each group's mean and (biased) variance (Gr x D); count: rows per group (Gr). */
int NAME(grouped_norm_forward)(int64_t R, int64_t D, int64_t Gr, REAL eps, const REAL *x, const int64_t *group,
                               const REAL *count, const REAL *weight, const REAL *bias, REAL *y, REAL *mean,
                               REAL *var) {
    int threads;
    REAL *scale = NAME(grouped_norm_buffers)(Gr, D, &threads);
    if (scale == NULL) return 1;
    REAL *shift = scale + Gr * D, *partial = shift + Gr * D;
    GROUP_SUMS(mean, x[r * D + d]);
    for (int64_t i = 0; i < Gr * D; i++) mean[i] /= (count[i / D] > 0 ? count[i / D] : (REAL)1);
    GROUP_SUMS(var, (x[r * D + d] - mean[group[r] * D + d]) * (x[r * D + d] - mean[group[r] * D + d]));
    for (int64_t i = 0; i < Gr * D; i++) {
        var[i] /= (count[i / D] > 0 ? count[i / D] : (REAL)1);
        scale[i] = weight[i] / SQRT(var[i] + eps);  /* y = x * scale + shift, per group */
        shift[i] = bias[i] - mean[i] * scale[i];
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const REAL *a = scale + group[r] * D, *c = shift + group[r] * D, *xr = x + r * D;
        REAL *yr = y + r * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) yr[d] = xr[d] * a[d] + c[d];
    }
    free(scale);
    return 0;
}

/* grad_x (R x D) and grad_weight, grad_bias (Gr x D) for grad_y, BatchNorm's closed form:
 *     dx = weight * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))   per group. */
int NAME(grouped_norm_backward)(int64_t R, int64_t D, int64_t Gr, REAL eps, const REAL *x, const int64_t *group,
                                const REAL *count, const REAL *weight, const REAL *mean, const REAL *var,
                                const REAL *grad_y, REAL *grad_x, REAL *grad_weight, REAL *grad_bias) {
    int threads;
    REAL *rstd = NAME(grouped_norm_buffers)(Gr, D, &threads);
    if (rstd == NULL) return 1;
    REAL *gain = rstd + Gr * D, *partial = gain + Gr * D;
    for (int64_t i = 0; i < Gr * D; i++) rstd[i] = (REAL)1 / SQRT(var[i] + eps);
#define XHAT(r, d) ((x[(r) * D + (d)] - mean[group[r] * D + (d)]) * rstd[group[r] * D + (d)])
    GROUP_SUMS(grad_bias, grad_y[r * D + d]);
    GROUP_SUMS(grad_weight, grad_y[r * D + d] * XHAT(r, d));
#undef XHAT
    for (int64_t i = 0; i < Gr * D; i++) gain[i] = weight[i] * rstd[i];
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const int64_t g = group[r];
        const REAL inv = (REAL)1 / (count[g] > 0 ? count[g] : (REAL)1);
        const REAL *gb = grad_bias + g * D, *gw = grad_weight + g * D, *a = gain + g * D;
        const REAL *m = mean + g * D, *s = rstd + g * D, *xr = x + r * D, *dy = grad_y + r * D;
        REAL *dx = grad_x + r * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++)
            dx[d] = a[d] * (dy[d] - gb[d] * inv - (xr[d] - m[d]) * s[d] * gw[d] * inv);
    }
    free(rstd);
    return 0;
}
