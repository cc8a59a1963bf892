// The draw of a token from a row of probabilities (rwkv_sampling.h).
#include "rwkv_sampling.h"

#include "rwkv_common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

namespace rwkv {

namespace {

// The buckets of top_p_cutoff: read off a value's float64 bits (exponent and
// the top BUCKET_BITS mantissa bits, which order non-negative doubles), a
// bucket spans 2^(1/64) (1.1%) of probability; 4096 of them reach 64 binary
// orders of magnitude below the row's largest value, and everything smaller
// shares the last one.  (mass and count fit in L1.)
constexpr int BUCKET_BITS = 6;
constexpr int64_t BUCKETS = 4096;

uint64_t bucket_key(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return bits >> (52 - BUCKET_BITS);
}

// The first index of values[0, n) (decreasing) at which before + the
// sequential sum reaches target, or n; sums[i] gets each partial sum.
int64_t first_reaching(const double * values, int64_t n, double before, double target, double * sums) {
    double s = before;
    for (int64_t i = 0; i < n; ++i) {
        s += values[i];
        sums[i] = s;
        if (s >= target) return i;
    }
    return n;
}

double sequential_total(const double * probs, int64_t n) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += probs[i];
    return total;
}

}  // namespace

double top_p_cutoff_sorted(const double * probs, int64_t n, double top_p) {
    std::vector<double> sorted(probs, probs + n);
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    std::vector<double> sums(static_cast<size_t>(n));
    const int64_t j = first_reaching(sorted.data(), n, 0.0, top_p * sequential_total(probs, n), sums.data());
    return j < n ? sorted[static_cast<size_t>(j)] : 0.0;
}

// Bucket b holds only values larger than those of bucket b + 1, so the
// values of the buckets before the one where the cumulative mass reaches the
// target are exactly the first ones in sorted order; only that bucket is
// sorted.  The masses are summed in another order than the definition's, so
// the answer stands only when the sums around it are further from the target
// than the rounding of either order can move them (n additions of values
// summing to S err by at most n * 2^-53 * S); other rows are sorted whole.
double top_p_cutoff(const double * probs, int64_t n, double top_p, TopPScratch & s) {
    s.mass.assign(BUCKETS, 0.0);
    s.count.assign(BUCKETS, 0);
    s.bucket.resize(static_cast<size_t>(n));
    const uint64_t top = bucket_key(*std::max_element(probs, probs + n));
    double total = 0.0;  // sequential, in id order, as the definition's
    for (int64_t i = 0; i < n; ++i) {
        const double v = probs[i];
        const auto b = static_cast<uint16_t>(std::min<uint64_t>(top - bucket_key(v), BUCKETS - 1));
        total += v;
        s.bucket[i] = b;
        s.mass[b] += v;
        s.count[b] += 1;
    }
    const double target = top_p * total;
    const double margin = 4.0 * static_cast<double>(n + BUCKETS) * std::ldexp(1.0, -53) * total;
    double before = 0.0;
    int64_t n_before = 0, b = 0;
    for (; b < BUCKETS && before + s.mass[b] < target; ++b) {
        before += s.mass[b];
        n_before += s.count[b];
    }
    if (b == BUCKETS) {  // the bucketed sums never reach the target: nor does the sorted sum, if clearly below
        return before + margin < target ? 0.0 : top_p_cutoff_sorted(probs, n, top_p);
    }
    s.values.clear();
    for (int64_t i = 0; i < n; ++i) {
        if (s.bucket[i] == b) s.values.push_back(probs[i]);
    }
    std::sort(s.values.begin(), s.values.end(), std::greater<double>());
    const int64_t m = static_cast<int64_t>(s.values.size());
    s.sums.resize(static_cast<size_t>(m));
    const int64_t j = first_reaching(s.values.data(), m, before, target, s.sums.data());
    if (j < m) {
        const bool reached = s.sums[j] - margin >= target;
        // nothing before the first value: its sum is the first, whatever the target
        const bool below = (j == 0 && n_before == 0) || (j == 0 ? before : s.sums[j - 1]) + margin < target;
        if (reached && below) return s.values[static_cast<size_t>(j)];
    }
    return top_p_cutoff_sorted(probs, n, top_p);
}

namespace {

void check_row(const rwkv_sample_row & row, size_t i) {
    if (row.probs == nullptr) fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "row %zu: probs is NULL", i);
    if (!(row.top_p >= 0.0 && row.top_p <= 1.0)) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "row %zu: top_p must be in [0, 1], got %g", i, row.top_p);
    }
    if (row.top_k < 0) fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "row %zu: top_k must be >= 0, got %d", i, row.top_k);
    if (!(row.u >= 0.0 && row.u < 1.0)) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "row %zu: u must be in [0, 1), got %g", i, row.u);
    }
}

[[noreturn]] void bad_value(size_t i, const char * what, const double * values, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        if (!(std::isfinite(values[j]) && values[j] >= 0.0)) {
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "row %zu: %s[%lld] = %g: must be finite and >= 0", i, what,
                 static_cast<long long>(j), values[j]);
        }
    }
    fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "row %zu: a bad %s value", i, what);
}

// Fails unless every value is finite and >= 0 (no early exit: it vectorises).
void check_values(const double * values, int64_t n, size_t i, const char * what) {
    bool ok = true;
    for (int64_t j = 0; j < n; ++j) ok &= std::isfinite(values[j]) & (values[j] >= 0.0);
    if (!ok) bad_value(i, what, values, n);
}

// Which tokens remain after top-p and top-k: probs >= cutoff, then (when
// top_k limits them) those above the k-th largest value and the first ties
// with it in id order.
struct Candidates {
    double cutoff = 0.0;
    double kth = 0.0;           // with top-k: the k-th largest candidate value
    int64_t tie_room = -1;      // with top-k: how many ties with kth may still join; -1: no top-k

    bool take(double p) {
        if (p < cutoff) return false;
        if (tie_room < 0 || p > kth) return true;
        if (p == kth && tie_room > 0) {
            --tie_room;
            return true;
        }
        return false;
    }
};

void limit_top_k(Candidates & c, const double * probs, int64_t n, int64_t top_k, std::vector<double> & scratch) {
    if (top_k == 0) return;
    scratch.clear();
    for (int64_t i = 0; i < n; ++i) {
        if (probs[i] >= c.cutoff) scratch.push_back(probs[i]);
    }
    if (top_k >= static_cast<int64_t>(scratch.size())) return;
    std::nth_element(scratch.begin(), scratch.begin() + (top_k - 1), scratch.end(), std::greater<double>());
    c.kth = scratch[static_cast<size_t>(top_k - 1)];
    const int64_t above = std::count_if(scratch.begin(), scratch.end(), [&](double p) { return p > c.kth; });
    c.tie_room = top_k - above;
}

// w if keep, else +0.0, on the bits: GCC compiles a floating-point select
// to a branch, which mispredicts when the cut-off falls amid the values.
double kept_or_zero(bool keep, double w) {
    uint64_t bits;
    std::memcpy(&bits, &w, sizeof bits);
    bits &= 0 - static_cast<uint64_t>(keep);
    std::memcpy(&w, &bits, sizeof w);
    return w;
}

// The candidates' weights (0 elsewhere) and their cumulative sum in id
// order: adding 0.0 leaves a sum as it is, so the sums at the candidates are
// those over the candidates alone.  Without top-k the choice is a select,
// not a branch (a cut-off in the middle of the values mispredicts).
void candidate_weights(Candidates c, const double * probs, const double * weights, int64_t n, double * w,
                       double * cdf) {
    double sum = 0.0;
    if (c.tie_room < 0) {
        for (int64_t j = 0; j < n; ++j) {
            w[j] = kept_or_zero(probs[j] >= c.cutoff, weights[j]);
            sum += w[j];
            cdf[j] = sum;
        }
    } else {
        for (int64_t j = 0; j < n; ++j) {
            w[j] = c.take(probs[j]) ? weights[j] : 0.0;
            sum += w[j];
            cdf[j] = sum;
        }
    }
}

struct Workspace {
    TopPScratch top_p;
    std::vector<double> w, cdf;
};

int32_t sample_row(const rwkv_sample_row & row, int64_t n, size_t i, Workspace & ws) {
    const double * probs = row.probs;
    const double * weights = row.weights != nullptr ? row.weights : row.probs;
    check_values(probs, n, i, "probs");
    Candidates c;
    if (row.top_p < 1.0) c.cutoff = top_p_cutoff(probs, n, row.top_p, ws.top_p);
    limit_top_k(c, probs, n, row.top_k, ws.top_p.values);
    double * w = ws.w.data();
    double * cdf = ws.cdf.data();
    candidate_weights(c, probs, weights, n, w, cdf);
    if (row.weights != nullptr) check_values(w, n, i, "weights");  // the candidates' (the others are 0)
    const double sum = cdf[n - 1];
    if (!(sum > 0.0 && std::isfinite(sum))) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "row %zu: the candidates' weights sum to %g", i, sum);
    }
    // the first sum above the point is at a candidate whose weight is > 0
    const int64_t j = std::upper_bound(cdf, cdf + n, row.u * sum) - cdf;
    if (j < n) return static_cast<int32_t>(j);
    int64_t last = n - 1;  // rounding put the point at the very end: the last weight > 0
    while (w[last] <= 0.0) --last;
    return static_cast<int32_t>(last);
}

}  // namespace

void sample_rows(const rwkv_sample_row * rows, size_t n_rows, size_t n_vocab, int32_t * tokens) {
    if (n_vocab == 0 || n_vocab > static_cast<size_t>(INT32_MAX)) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "n_vocab must be in [1, %d], got %zu", INT32_MAX, n_vocab);
    }
    for (size_t i = 0; i < n_rows; ++i) check_row(rows[i], i);
    Workspace ws;
    ws.w.resize(n_vocab);
    ws.cdf.resize(n_vocab);
    for (size_t i = 0; i < n_rows; ++i) tokens[i] = sample_row(rows[i], static_cast<int64_t>(n_vocab), i, ws);
}

}  // namespace rwkv
