/* Body of the pair attention kernels, included once per floating type (instantiate.h) with
 * REAL (the type), NAME(f) (the exported name) and EXP defined.
 *
 * Softmax attention over the listed (query, key) pairs of token-views: the keys of query r are
 * key[starts[r] .. starts[r + 1]). Token-view r = m * T + t keeps its H heads of width E of q,
 * k and v in qkv[t][m][0 .. 3HE), the layout of the mini attention's one qkv matmul, so nothing
 * is copied or transposed. Heads are tiny (2 channels), so a pair's work is a few scalar
 * operations; what costs is the passes over pairs: one forward, one backward, all heads of a
 * pair together. */

/* Where each token-view's q, k, v row starts in qkv (M * T entries), so no pair pays a division. */
static int64_t *NAME(qkv_rows)(int64_t T, int64_t M, int64_t HE) {
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)(M * T > 0 ? M * T : 1));
    if (rows != NULL)
        for (int64_t m = 0; m < M; m++)
            for (int64_t t = 0; t < T; t++) rows[m * T + t] = (t * M + m) * 3 * HE;
    return rows;
}

/* The token-views [first, first + S) of one slice: their rows of out (M*T x HE) and their pairs'
 * softmax weights (P x H). Returns 1 when a pair leaves the slice (see the backward). */
static inline int NAME(pair_attention_forward_slice)(const int64_t H, const int64_t E, int64_t first, int64_t S,
                                                     REAL scale, const REAL *qkv, const int64_t *key,
                                                     const int64_t *starts, const int64_t *rows, REAL *weights,
                                                     REAL *out) {
    const int64_t HE = H * E, end = first + S;
    for (int64_t r = first; r < end; r++) {
        const REAL *q = qkv + rows[r];
        const int64_t p0 = starts[r], p1 = starts[r + 1];
        REAL peak[H], total[H], acc[HE];  /* locals: registers for the built-in shape */
        for (int64_t p = p0; p < p1; p++) {
            if (key[p] < first || key[p] >= end) return 1;
            const REAL *k = qkv + rows[key[p]] + HE;
            REAL *s = weights + p * H;
            for (int64_t h = 0; h < H; h++) {
                REAL dot = 0;
                for (int64_t e = 0; e < E; e++) dot += q[h * E + e] * k[h * E + e];
                s[h] = dot * scale;
                peak[h] = (p == p0 || s[h] > peak[h]) ? s[h] : peak[h];
            }
        }
        for (int64_t h = 0; h < H; h++) total[h] = 0;
        for (int64_t p = p0; p < p1; p++)
            for (int64_t h = 0; h < H; h++) {
                weights[p * H + h] = EXP(weights[p * H + h] - peak[h]);
                total[h] += weights[p * H + h];
            }
        for (int64_t c = 0; c < HE; c++) acc[c] = 0;
        for (int64_t h = 0; h < H; h++) total[h] = (REAL)1 / total[h];
        for (int64_t p = p0; p < p1; p++) {
            const REAL *v = qkv + rows[key[p]] + 2 * HE;
            for (int64_t h = 0; h < H; h++) {
                const REAL w = weights[p * H + h] * total[h];
                weights[p * H + h] = w;
                for (int64_t e = 0; e < E; e++) acc[h * E + e] += w * v[h * E + e];
            }
        }
        for (int64_t c = 0; c < HE; c++) out[r * HE + c] = acc[c];
    }
    return 0;
}

/* The mini attention's shape (6 heads of width 2) gets a copy of the loops with it built in,
 * fully unrolled with the sums in registers; other shapes take the general loops. Returns 1
 * when out of memory, 2 when a pair leaves its slice (then out is not complete). */
int NAME(pair_attention_forward)(int64_t T, int64_t M, int64_t H, int64_t E, int64_t S, REAL scale,
                                 const REAL *qkv, const int64_t *key, const int64_t *starts, REAL *weights,
                                 REAL *out) {
    int64_t *rows = NAME(qkv_rows)(T, M, H * E);
    int escaped = 0;
    if (rows == NULL) return 1;
    /* one parallel loop per branch: the shape must be a constant inside the outlined region */
    if (H == 6 && E == 2) {
#pragma omp parallel for schedule(static) reduction(| : escaped)
        for (int64_t slice = 0; slice < M * T / S; slice++)
            escaped |= NAME(pair_attention_forward_slice)(6, 2, slice * S, S, scale, qkv, key, starts, rows,
                                                          weights, out);
    } else {
#pragma omp parallel for schedule(static) reduction(| : escaped)
        for (int64_t slice = 0; slice < M * T / S; slice++)
            escaped |= NAME(pair_attention_forward_slice)(H, E, slice * S, S, scale, qkv, key, starts, rows,
                                                          weights, out);
    }
    free(rows);
    return escaped ? 2 : 0;
}

/* grad_qkv (same layout as qkv) for grad_out (M*T x HE), one pass over the pairs: per query
 * r, the scores' gradient ds = w * (<dout_r, v_k> - <dout_r, out_r>) gives q_r's gradient
 * (summed here) and adds to k's and v's. Pairs never leave their slice of S consecutive
 * token-views (one view of one cloud: a cell never spans two), so threads take whole slices
 * and never add to the same row. */
static inline void NAME(pair_attention_backward_slice)(const int64_t H, const int64_t E, int64_t first, int64_t S,
                                                       REAL scale, const REAL *qkv, const int64_t *key,
                                                       const int64_t *starts, const int64_t *rows,
                                                       const REAL *weights, const REAL *out, const REAL *grad_out,
                                                       REAL *grad_qkv) {
    const int64_t HE = H * E;
    for (int64_t r = first; r < first + S; r++)
        for (int64_t c = HE; c < 3 * HE; c++) grad_qkv[rows[r] + c] = 0;
    for (int64_t r = first; r < first + S; r++) {
        const REAL *go = grad_out + r * HE, *o = out + r * HE, *q = qkv + rows[r];
        REAL centre[H], acc[HE];  /* locals: registers for the built-in shape */
        for (int64_t h = 0; h < H; h++) {
            centre[h] = 0;
            for (int64_t e = 0; e < E; e++) centre[h] += go[h * E + e] * o[h * E + e];
        }
        for (int64_t c = 0; c < HE; c++) acc[c] = 0;
        for (int64_t p = starts[r]; p < starts[r + 1]; p++) {
            const REAL *k = qkv + rows[key[p]] + HE, *v = k + HE;
            REAL *gk = grad_qkv + rows[key[p]] + HE, *gv = gk + HE;
            for (int64_t h = 0; h < H; h++) {
                REAL dw = 0;
                for (int64_t e = 0; e < E; e++) dw += go[h * E + e] * v[h * E + e];
                const REAL w = weights[p * H + h], ds = w * (dw - centre[h]);
                for (int64_t e = 0; e < E; e++) {
                    acc[h * E + e] += ds * k[h * E + e];
                    gk[h * E + e] += ds * scale * q[h * E + e];
                    gv[h * E + e] += w * go[h * E + e];
                }
            }
        }
        REAL *gq = grad_qkv + rows[r];
        for (int64_t c = 0; c < HE; c++) gq[c] = acc[c] * scale;
    }
}

int NAME(pair_attention_backward)(int64_t T, int64_t M, int64_t H, int64_t E, int64_t S, REAL scale,
                                  const REAL *qkv, const int64_t *key, const int64_t *starts, const REAL *weights,
                                  const REAL *out, const REAL *grad_out, REAL *grad_qkv) {
    int64_t *rows = NAME(qkv_rows)(T, M, H * E);
    if (rows == NULL) return 1;
    if (H == 6 && E == 2) {
#pragma omp parallel for schedule(static)
        for (int64_t slice = 0; slice < M * T / S; slice++)
            NAME(pair_attention_backward_slice)(6, 2, slice * S, S, scale, qkv, key, starts, rows, weights, out,
                                                grad_out, grad_qkv);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t slice = 0; slice < M * T / S; slice++)
            NAME(pair_attention_backward_slice)(H, E, slice * S, S, scale, qkv, key, starts, rows, weights, out,
                                                grad_out, grad_qkv);
    }
    free(rows);
    return 0;
}
