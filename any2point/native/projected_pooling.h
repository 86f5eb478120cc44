/* Body of the projected cell pooling kernels, included once per floating type (instantiate.h)
 * with REAL (the type) and NAME(f) (the exported name) defined.
 *
 * Token-view r = m * T + t is token t seen in view m. Its row of the view copy is
 *     y_r = x_t + b_m + o_r W_m            (x: T x D, o: M*T x K, W: M x K x D, b: M x D)
 * and a cell u (the token-views members[offsets[u] .. offsets[u + 1]]) pools to
 *     out_u = mean_{r in u} y_r + max_{r in u} y_r      (per channel).
 * The rows y_r are built in a small buffer when needed and never stored, which is the point:
 * the PyTorch path writes all M*T x D of them and reads them back a dozen times. */

/* Channels [d0, d0 + len) of y_r, len <= CHUNK. Called with len == CHUNK the loops have a
 * constant trip count, so the chunk stays in vector registers while the K rows of W stream by
 * (one load per multiply-add instead of three through a buffer). */
static inline void NAME(project_chunk)(const REAL *x_t, const REAL *b_m, const REAL *o_r, const REAL *w_m,
                                       int64_t K, int64_t D, int64_t len, REAL *restrict y) {
    REAL acc[CHUNK];
    for (int64_t j = 0; j < len; j++) acc[j] = x_t[j] + b_m[j];
    for (int64_t k = 0; k < K; k++) {
        const REAL a = o_r[k];
        const REAL *restrict w = w_m + k * D;
        for (int64_t j = 0; j < len; j++) acc[j] += a * w[j];
    }
    for (int64_t j = 0; j < len; j++) y[j] = acc[j];
}

/* y_r = x_t + b_m + o_r W_m, all D channels. Never inlined: the forward and the backward must
 * get bit-identical rows (the backward finds the max's rows by comparing with the saved max),
 * which one compiled copy guarantees whatever the optimiser does at each call site. */
static NOINLINE void NAME(project)(const REAL *x_t, const REAL *b_m, const REAL *o_r, const REAL *w_m,
                                   int64_t K, int64_t D, REAL *restrict y) {
    int64_t d0 = 0;
    for (; d0 + CHUNK <= D; d0 += CHUNK)
        NAME(project_chunk)(x_t + d0, b_m + d0, o_r, w_m + d0, K, D, CHUNK, y + d0);
    if (d0 < D) NAME(project_chunk)(x_t + d0, b_m + d0, o_r, w_m + d0, K, D, D - d0, y + d0);
}

/* Cells come grouped by (view, cloud): the cells of view m in cloud q are
 * [groups[m * Q + q], groups[m * Q + q + 1]), and a cell never mixes clouds. Threads take whole
 * clouds and visit each in all M views, so one cloud's token rows (of x, and of grad_x in the
 * backward) stay in the core's cache while its views go by. */
#define FOR_EACH_CELL_OF_CLOUD(q, u)                                       \
    for (int64_t m_ = 0; m_ < M; m_++)                                     \
        for (int64_t u = groups[m_ * Q + q]; u < groups[m_ * Q + q + 1]; u++)

/* Pools every cell into out (U x D), and keeps for the backward each cell's max (peak) and one
 * over the number of its rows that reach it (share: the max's gradient is split evenly between
 * tied rows, as torch.scatter_reduce's amax does). Returns 0, or 1 when out of memory. */
int NAME(projected_pooling_forward)(int64_t T, int64_t D, int64_t K, int64_t M, int64_t Q, int64_t largest,
                                    const REAL *x, const REAL *o, const REAL *w, const REAL *b,
                                    const int64_t *members, const int64_t *offsets, const int64_t *groups,
                                    REAL *out, REAL *peak, REAL *share) {
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        REAL *rows = malloc(sizeof(REAL) * (size_t)(largest > 0 ? largest : 1) * (size_t)D);
        failed = rows == NULL;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < Q; q++) {
            if (rows == NULL) continue;
            FOR_EACH_CELL_OF_CLOUD(q, u) {
                REAL *restrict sum = out + u * D, *restrict top = peak + u * D, *restrict hits = share + u * D;
                const int64_t first = offsets[u], n = offsets[u + 1] - first;
                for (int64_t d = 0; d < D; d++) sum[d] = top[d] = hits[d] = 0;
                if (n == 0) continue;  /* an empty cell pools to zeros, as scatter_mean and scatter_max give */
                for (int64_t i = 0; i < n; i++) {
                    const int64_t r = members[first + i], m = r / T, t = r - m * T;
                    REAL *restrict y = rows + i * D;
                    NAME(project)(x + t * D, b + m * D, o + r * K, w + m * K * D, K, D, y);
                    /* y != y keeps a NaN, as torch's amax does */
#pragma omp simd
                    for (int64_t d = 0; d < D; d++)
                        top[d] = (i == 0 || y[d] > top[d] || y[d] != y[d]) ? y[d] : top[d];
                    for (int64_t d = 0; d < D; d++) sum[d] += y[d];
                }
                for (int64_t i = 0; i < n; i++) {
                    const REAL *restrict y = rows + i * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) hits[d] += (y[d] == top[d]) ? (REAL)1 : (REAL)0;
                }
                const REAL inv = (REAL)1 / (REAL)n;
                for (int64_t d = 0; d < D; d++) {
                    sum[d] = sum[d] * inv + top[d];
                    hits[d] = (REAL)1 / (hits[d] > 0 ? hits[d] : (REAL)1);
                }
            }
        }
        free(rows);
    }
    return failed;
}

/* Gradients for grad_out (U x D). The mean's gradient reaches every row of a cell as grad / n,
 * the max's the rows equal to the cell's max (recomputed rows are bit-identical, see project),
 * times share. Threads take whole clouds, so they add to disjoint rows of grad_x (T x D) and
 * write disjoint rows of grad_o; grad_w (M x K x D) and grad_b (M x D) are summed per thread
 * and added in thread order (the same bits on every run with the same number of threads).
 * grad_x, grad_w and grad_b come zeroed. Returns 0, or 1 when out of memory. */
int NAME(projected_pooling_backward)(int64_t T, int64_t D, int64_t K, int64_t M, int64_t Q, const REAL *x,
                                     const REAL *o, const REAL *w, const REAL *b, const int64_t *members,
                                     const int64_t *offsets, const int64_t *groups, const REAL *peak,
                                     const REAL *share, const REAL *grad_out, REAL *grad_x, REAL *grad_o,
                                     REAL *grad_w, REAL *grad_b) {
    const size_t per_thread = (size_t)(M * K * D + M * D + D);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    REAL *sums = calloc((size_t)threads * per_thread, sizeof(REAL));
    if (sums == NULL) return 1;
#pragma omp parallel num_threads(threads)
    {
        int me = 0;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        REAL *own_w = sums + (size_t)me * per_thread, *own_b = own_w + M * K * D, *y = own_b + M * D;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < Q; q++) {
            FOR_EACH_CELL_OF_CLOUD(q, u) {
                const int64_t first = offsets[u], n = offsets[u + 1] - first;
                const REAL inv = (REAL)1 / (REAL)(n > 0 ? n : 1);
                const REAL *restrict g = grad_out + u * D, *restrict top = peak + u * D;
                const REAL *restrict hits = share + u * D;
                for (int64_t i = 0; i < n; i++) {
                    const int64_t r = members[first + i], m = r / T, t = r - m * T;
                    const REAL *w_m = w + m * K * D;
                    NAME(project)(x + t * D, b + m * D, o + r * K, w_m, K, D, y);
                    REAL *restrict gx = grad_x + t * D, *restrict gb = own_b + m * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) {
                        /* y becomes this row's gradient in place */
                        y[d] = g[d] * inv + ((y[d] == top[d]) ? g[d] * hits[d] : (REAL)0);
                        gx[d] += y[d];
                        gb[d] += y[d];
                    }
                    const REAL *o_r = o + r * K;
                    for (int64_t k = 0; k < K; k++) {
                        const REAL *restrict w_k = w_m + k * D;
                        REAL *restrict gw = own_w + (m * K + k) * D;
                        const REAL a = o_r[k];
                        REAL dot = 0;
#pragma omp simd reduction(+ : dot)
                        for (int64_t d = 0; d < D; d++) { dot += y[d] * w_k[d]; gw[d] += a * y[d]; }
                        grad_o[r * K + k] = dot;
                    }
                }
            }
        }
    }
    for (int me = 0; me < threads; me++) {
        const REAL *own_w = sums + (size_t)me * per_thread, *own_b = own_w + M * K * D;
        for (int64_t i = 0; i < M * K * D; i++) grad_w[i] += own_w[i];
        for (int64_t i = 0; i < M * D; i++) grad_b[i] += own_b[i];
    }
    free(sums);
    return 0;
}
