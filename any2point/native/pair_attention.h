/* Body of the pair attention kernels, included once per floating type by kernels.c with REAL
 * (the type), NAME(f) (the exported name) and EXP defined.
 *
 * Softmax attention over the listed (query, key) pairs of token-views: the keys of query r are
 * key[starts[r] .. starts[r + 1]), and pair swapped[p] is pair p read the other way round
 * (sharing a cell is symmetric). Token-view r = m * T + t keeps its H heads of width E of q, k
 * and v in qkv[t][m][0 .. 3HE), the layout of the mini attention's one qkv matmul, so nothing
 * is copied or transposed. Heads are tiny (2 channels), so a pair's work is a few scalar
 * operations; what costs is the passes over pairs, which this does once in each direction,
 * all heads of a pair together. */

/* Where each token-view's q, k, v row starts in qkv (M * T entries), so no pair pays a division. */
static int64_t *NAME(qkv_rows)(int64_t T, int64_t M, int64_t HE) {
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)(M * T > 0 ? M * T : 1));
    if (rows != NULL)
        for (int64_t m = 0; m < M; m++)
            for (int64_t t = 0; t < T; t++) rows[m * T + t] = (t * M + m) * 3 * HE;
    return rows;
}

/* out (M*T x HE) and the softmax weights of every pair (P x H). */
static inline void NAME(pair_attention_forward_core)(int64_t T, int64_t M, const int64_t H, const int64_t E, REAL scale,
                                                     const REAL *qkv, const int64_t *key, const int64_t *starts,
                                                     const int64_t *rows, REAL *weights, REAL *out) {
    const int64_t HE = H * E;
#pragma omp parallel
    {
        REAL peak[H], total[H];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M * T; r++) {
            const REAL *q = qkv + rows[r];
            const int64_t p0 = starts[r], p1 = starts[r + 1];
            for (int64_t p = p0; p < p1; p++) {
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
            REAL acc[HE];
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
    }
}

/* The mini attention's shape (6 heads of width 2) gets a copy of the loops with it built in,
 * fully unrolled with the sums in registers; other shapes take the general loops. */
int NAME(pair_attention_forward)(int64_t T, int64_t M, int64_t H, int64_t E, REAL scale, const REAL *qkv,
                                 const int64_t *key, const int64_t *starts, REAL *weights, REAL *out) {
    int64_t *rows = NAME(qkv_rows)(T, M, H * E);
    if (rows == NULL) return 1;
    if (H == 6 && E == 2)
        NAME(pair_attention_forward_core)(T, M, 6, 2, scale, qkv, key, starts, rows, weights, out);
    else
        NAME(pair_attention_forward_core)(T, M, H, E, scale, qkv, key, starts, rows, weights, out);
    free(rows);
    return 0;
}

/* grad_qkv (same layout as qkv) for grad_out (M*T x HE). First per query: the scores'
 * gradient ds = w * (<dout_q, v_k> - <dout_q, out_q>) of its pairs (kept in scratch, P x H) and
 * q's gradient; then per key, through the swapped pairs: k's and v's gradients. Each pass
 * writes only its own rows. Returns 1 when out of memory. */
static inline void NAME(pair_attention_backward_core)(int64_t T, int64_t M, const int64_t H, const int64_t E,
                                                      REAL scale, const REAL *qkv, const int64_t *key,
                                                      const int64_t *starts, const int64_t *swapped,
                                                      const int64_t *rows, const REAL *weights, const REAL *out,
                                                      const REAL *grad_out, REAL *scratch, REAL *grad_qkv) {
    const int64_t HE = H * E;
#pragma omp parallel
    {
        REAL centre[H];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M * T; r++) {
            const REAL *go = grad_out + r * HE, *o = out + r * HE;
            REAL *gq = grad_qkv + rows[r];
            for (int64_t h = 0; h < H; h++) {
                centre[h] = 0;
                for (int64_t e = 0; e < E; e++) centre[h] += go[h * E + e] * o[h * E + e];
            }
            REAL acc[HE];  /* sums in locals (registers for the built-in shape), stored once */
            for (int64_t c = 0; c < HE; c++) acc[c] = 0;
            for (int64_t p = starts[r]; p < starts[r + 1]; p++) {
                const REAL *k = qkv + rows[key[p]] + HE, *v = k + HE;
                for (int64_t h = 0; h < H; h++) {
                    REAL dw = 0;
                    for (int64_t e = 0; e < E; e++) dw += go[h * E + e] * v[h * E + e];
                    const REAL ds = weights[p * H + h] * (dw - centre[h]);
                    scratch[p * H + h] = ds;
                    for (int64_t e = 0; e < E; e++) acc[h * E + e] += ds * k[h * E + e];
                }
            }
            for (int64_t c = 0; c < HE; c++) gq[c] = acc[c] * scale;
        }
        /* the implicit barrier above: every pair's ds is known */
#pragma omp for schedule(static)
        for (int64_t r = 0; r < M * T; r++) {
            REAL acc_k[HE], acc_v[HE];
            for (int64_t c = 0; c < HE; c++) acc_k[c] = acc_v[c] = 0;
            for (int64_t p = starts[r]; p < starts[r + 1]; p++) {
                /* pair (key[p], r): r is the key, key[p] the query */
                const int64_t other = key[p], back = swapped[p];
                const REAL *q = qkv + rows[other], *go = grad_out + other * HE;
                for (int64_t h = 0; h < H; h++) {
                    const REAL ds = scratch[back * H + h] * scale, w = weights[back * H + h];
                    for (int64_t e = 0; e < E; e++) {
                        acc_k[h * E + e] += ds * q[h * E + e];
                        acc_v[h * E + e] += w * go[h * E + e];
                    }
                }
            }
            REAL *gk = grad_qkv + rows[r] + HE, *gv = gk + HE;
            for (int64_t c = 0; c < HE; c++) {
                gk[c] = acc_k[c];
                gv[c] = acc_v[c];
            }
        }
    }
}

int NAME(pair_attention_backward)(int64_t T, int64_t M, int64_t H, int64_t E, REAL scale, const REAL *qkv,
                                  const int64_t *key, const int64_t *starts, const int64_t *swapped,
                                  const REAL *weights, const REAL *out, const REAL *grad_out, REAL *scratch,
                                  REAL *grad_qkv) {
    int64_t *rows = NAME(qkv_rows)(T, M, H * E);
    if (rows == NULL) return 1;
    if (H == 6 && E == 2)
        NAME(pair_attention_backward_core)(T, M, 6, 2, scale, qkv, key, starts, swapped, rows, weights, out,
                                           grad_out, scratch, grad_qkv);
    else
        NAME(pair_attention_backward_core)(T, M, H, E, scale, qkv, key, starts, swapped, rows, weights, out,
                                           grad_out, scratch, grad_qkv);
    free(rows);
    return 0;
}
