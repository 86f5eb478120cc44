/* Every kernel body for one floating type: kernels.c defines REAL, NAME(f), EXP and SQRT, then
 * includes this file; it leaves no macro of the body behind for the next type. */
#include "projected_pooling.h"
#include "pair_attention.h"
#include "guided_sum.h"
#include "grouped_norm.h"
#undef REAL
#undef NAME
#undef EXP
#undef SQRT
#undef GROUP_SUMS
#undef FOR_EACH_CELL_OF_CLOUD
