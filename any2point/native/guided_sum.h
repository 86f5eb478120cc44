/* Body of the guided view sum kernels, included once per floating type (instantiate.h) with
 * REAL (the type), NAME(f) (the exported name) and SQRT defined.
 *
 * Token t (T of them, Q clouds of T / Q tokens each) sees in view m the cell u = cells[t][m]
 * (M views) with feature F_u (views: U x D); its 3D reference feature is R_t (reference: T x D):
 *     a_m = (cos(F_u, R_t) + 1) / 2,   w_m = a_m / max(sum_m a_m, 1e-6),   out_t = sum_m w_m F_u
 * with the norms clamped at 1e-12 as F.normalize does. A cell holds tokens of one cloud only, so
 * threads take whole clouds and the backward adds each cell's gradient without contention. */

static inline REAL NAME(dot)(const REAL *restrict a, const REAL *restrict b, int64_t D) {
    REAL s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

/* out (T x D); keeps for the backward each cell's norm (U) and each token's view weights
 * (T x M), and the sum of its a_m (T). */
int NAME(guided_sum_forward)(int64_t T, int64_t U, int64_t D, int64_t M, const REAL *views,
                             const REAL *reference, const int64_t *cells, REAL *out, REAL *cell_norm,
                             REAL *weights, REAL *total) {
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t u = 0; u < U; u++) cell_norm[u] = SQRT(NAME(dot)(views + u * D, views + u * D, D));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            const REAL *r = reference + t * D;
            const REAL r_norm = SQRT(NAME(dot)(r, r, D));
            const REAL r_clamped = r_norm > (REAL)1e-12 ? r_norm : (REAL)1e-12;
            REAL *w = weights + t * M, sum = 0;
            for (int64_t m = 0; m < M; m++) {
                const int64_t u = cells[t * M + m];
                const REAL f_clamped = cell_norm[u] > (REAL)1e-12 ? cell_norm[u] : (REAL)1e-12;
                w[m] = (NAME(dot)(views + u * D, r, D) / (f_clamped * r_clamped) + 1) / 2;
                sum += w[m];
            }
            total[t] = sum;
            const REAL inv = (REAL)1 / (sum > (REAL)1e-6 ? sum : (REAL)1e-6);
            REAL *o = out + t * D;
            for (int64_t d = 0; d < D; d++) o[d] = 0;
            for (int64_t m = 0; m < M; m++) {
                w[m] *= inv;
                const REAL *f = views + cells[t * M + m] * D, wm = w[m];
#pragma omp simd
                for (int64_t d = 0; d < D; d++) o[d] += wm * f[d];
            }
        }
    }
    return 0;
}

/* Gradients of views (U x D, zeroed by the caller) and reference (T x D) for grad_out (T x D).
 * Per token: the direct term w_m g into its cells, then through the weights:
 *     dw_m = <g, F_u>,  da_m = (dw_m - sum_k w_k dw_k) / S  (S unclamped; dw_m / S when clamped),
 *     dcos_m = da_m / 2, and cos = <F, R> / (|F| |R|) differentiated in F and R.
 * Threads take clouds [T / Q tokens each], so no two threads touch one cell. */
int NAME(guided_sum_backward)(int64_t T, int64_t D, int64_t M, int64_t Q, const REAL *views,
                              const REAL *reference, const int64_t *cells, const REAL *cell_norm,
                              const REAL *weights, const REAL *total, const REAL *grad_out, REAL *grad_views,
                              REAL *grad_reference) {
    const int64_t per_cloud = Q > 0 ? T / Q : 0;
#pragma omp parallel for schedule(static)
    for (int64_t q = 0; q < Q; q++) {
        REAL dw[M > 0 ? M : 1], dots[M > 0 ? M : 1];  /* per view of the token at hand */
        for (int64_t t = q * per_cloud; t < (q + 1) * per_cloud; t++) {
            const REAL *g = grad_out + t * D, *r = reference + t * D, *w = weights + t * M;
            const REAL r_norm = SQRT(NAME(dot)(r, r, D));
            const REAL r_clamped = r_norm > (REAL)1e-12 ? r_norm : (REAL)1e-12;
            const REAL sum = total[t];
            const int clamped_sum = !(sum > (REAL)1e-6);
            const REAL inv = (REAL)1 / (clamped_sum ? (REAL)1e-6 : sum);
            REAL centre = 0;
            for (int64_t m = 0; m < M; m++) {
                const REAL *f = views + cells[t * M + m] * D;
                dw[m] = NAME(dot)(g, f, D);
                dots[m] = NAME(dot)(f, r, D);
                centre += w[m] * dw[m];
            }
            REAL *gr = grad_reference + t * D, r_scale = 0;
            for (int64_t d = 0; d < D; d++) gr[d] = 0;
            for (int64_t m = 0; m < M; m++) {
                const int64_t u = cells[t * M + m];
                const REAL *f = views + u * D;
                REAL *gf = grad_views + u * D;
                const REAL f_norm = cell_norm[u], f_clamped = f_norm > (REAL)1e-12 ? f_norm : (REAL)1e-12;
                /* w_m = a_m / S: with S clamped it is a_m * 1e6, no competition between views */
                const REAL da = clamped_sum ? dw[m] * inv : (dw[m] - centre) * inv;
                const REAL dcos = da / 2;
                const REAL d_dot = dcos / (f_clamped * r_clamped);
                /* d cos / d|F| = -cos / |F| (only where the clamp is not active), same for |R| */
                const REAL cosine = dots[m] / (f_clamped * r_clamped);
                const REAL f_coef = f_norm > (REAL)1e-12 ? -dcos * cosine / (f_clamped * f_norm) : (REAL)0;
                r_scale += r_norm > (REAL)1e-12 ? -dcos * cosine / (r_clamped * r_norm) : (REAL)0;
                const REAL wm = w[m];
#pragma omp simd
                for (int64_t d = 0; d < D; d++) {
                    gf[d] += wm * g[d] + d_dot * r[d] + f_coef * f[d];
                    gr[d] += d_dot * f[d];
                }
            }
#pragma omp simd
            for (int64_t d = 0; d < D; d++) gr[d] += r_scale * r[d];
        }
    }
    return 0;
}
