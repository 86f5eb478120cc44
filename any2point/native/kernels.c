/* any2point's CPU kernels for float and double: each body (a .h here) is included once per type. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif
#ifdef _OPENMP
#define THREADS(n) ((n) = omp_get_max_threads())
#define THREAD_ID() omp_get_thread_num()
#else
#define THREADS(n) ((n) = 1)
#define THREAD_ID() 0
#endif
#define CHUNK 64  /* channels projected at a time: four 512-bit registers of floats */

#define REAL float
#define NAME(f) f##_f32
#define EXP expf
#define SQRT sqrtf
#include "projected_pooling.h"
#include "pair_attention.h"
#include "guided_sum.h"
#include "grouped_norm.h"
#undef REAL
#undef NAME
#undef EXP
#undef SQRT
#undef GROUP_SUMS

#define REAL double
#define NAME(f) f##_f64
#define EXP exp
#define SQRT sqrt
#include "projected_pooling.h"
#include "pair_attention.h"
#include "guided_sum.h"
#include "grouped_norm.h"
#undef REAL
#undef NAME
#undef EXP
#undef SQRT
#undef GROUP_SUMS
