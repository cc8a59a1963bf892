// The draw of a token from a row of probabilities (rwkv_sample_rows):
// top-p, top-k, then a draw in id order.  The semantics are those of
// rwkv_cpp.sampling's reference (candidates, draw); docs/SAMPLING.md.
#pragma once

#include "rwkv.h"

#include <cstdint>
#include <vector>

namespace rwkv {

// Buffers of top_p_cutoff, reused from row to row.
struct TopPScratch {
    std::vector<double> mass, values, sums;
    std::vector<int64_t> count;
    std::vector<uint16_t> bucket;
};

// The top-p cut-off of probs[0, n) (finite, >= 0), exactly as defined: the
// value at which the sequential cumulative sum of the values in decreasing
// order first reaches top_p * S, with S their sequential sum in id order (0
// if it never does).  Most rows are decided from bucketed masses and one
// sorted bucket; the rest are sorted whole.
double top_p_cutoff(const double * probs, int64_t n, double top_p, TopPScratch & scratch);

// The same by its definition: a full sort (the reference, for tests).
double top_p_cutoff_sorted(const double * probs, int64_t n, double top_p);

// The token rows[i] gives, for every row; throws Error on a bad row.
void sample_rows(const rwkv_sample_row * rows, size_t n_rows, size_t n_vocab, int32_t * tokens);

}  // namespace rwkv
