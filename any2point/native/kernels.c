/* any2point's CPU kernels for float and double: instantiate.h includes every body (the other .h
 * files here) once per type. */
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

/* e^x in float for the softmax (x <= 0 there), inlined so loops over heads vectorise, where a
 * call to libm's expf per score cost more than the rest of the attention: 2^n e^r with
 * n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), e^r by Cephes' degree-6 polynomial;
 * about 1 ulp from the exact value. Inputs below -87 give e^-87 (1.6e-38) rather than 0. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = nearbyintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {((int32_t)n + 127) << 23};
    return p * scale.f;
}

#define REAL float
#define NAME(f) f##_f32
#define EXP exp_f32
#define SQRT sqrtf
#include "instantiate.h"

#define REAL double
#define NAME(f) f##_f64
#define EXP exp
#define SQRT sqrt
#include "instantiate.h"
