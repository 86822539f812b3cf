// Batched K-means, the device-agnostic driver (see csrc/kmeans_driver.h and
// wsss_fast/reference/kmeans.py for the algorithm). Lives with the CPU sources
// because those are always built; the CUDA glue calls it with its kernels.
//
// Host-device traffic per Lloyd iteration: the active-run lists (a few KB)
// down, the changed-label counts and centre shifts of the active runs up, and
// one flag saying whether any run has an empty cluster.

#include "../kmeans_driver.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

#include "../kmeans_checks.h"

namespace wsss_fast {
namespace kmeans {

namespace {

// Runs that reach the same partition differ in inertia by rounding only; the
// first of the runs within this relative distance of the lowest inertia wins
// (scikit-learn also keeps the earlier of two runs with the same clustering).
constexpr double kBestRtol = 1e-9;

uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

at::Tensor to_device(const std::vector<int64_t>& v, const at::Device& device) {
  auto host = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), host.data_ptr<int64_t>());
  return host.to(device);
}

template <typename T>
std::vector<T> to_host(const at::Tensor& t) {
  const auto host = t.to(at::kCPU, c10::CppTypeToScalarType<T>::value).contiguous();
  const T* p = host.template const_data_ptr<T>();
  return std::vector<T>(p, p + host.numel());
}

// (group, begin, end) triples cutting every group into pieces of at most
// `rows` rows; `group_off` (if not null) gets the first piece of each group.
std::vector<int64_t> cut(const std::vector<int64_t>& offsets, int64_t rows,
                         std::vector<int64_t>* group_off) {
  std::vector<int64_t> out;
  const int64_t groups = static_cast<int64_t>(offsets.size()) - 1;
  if (group_off) group_off->assign(1, 0);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = offsets[g]; b < offsets[g + 1]; b += rows) {
      out.insert(out.end(), {g, b, std::min(b + rows, offsets[g + 1])});
    }
    if (group_off) group_off->push_back(static_cast<int64_t>(out.size() / 3));
  }
  return out;
}

// `runs` (ascending run ids) as a RunSet.
RunSet make_runset(const std::vector<int64_t>& runs, int64_t groups, int64_t n_init,
                   const at::Device& device) {
  RunSet rs;
  rs.runs = runs;
  rs.slot_off.assign(groups + 1, 0);
  for (int64_t run : runs) ++rs.slot_off[run / n_init + 1];
  for (int64_t g = 0; g < groups; ++g) rs.slot_off[g + 1] += rs.slot_off[g];
  rs.runs_dev = to_device(rs.runs, device);
  rs.slot_off_dev = to_device(rs.slot_off, device);
  return rs;
}

// Rows run * width + j, j < width, of every slot: the columns of the runs.
at::Tensor column_rows(const RunSet& rs, int64_t width) {
  auto j = at::arange(width, rs.runs_dev.options());
  return (rs.runs_dev.unsqueeze(1) * width + j).reshape({-1});
}

// Random init: min(n, k) distinct indices in [0, n) by Floyd's algorithm, then
// copies of the first (wsss_fast/reference/kmeans.py, random_init_indices).
std::vector<int64_t> random_init(uint64_t seed, int64_t group, int64_t run, int64_t n,
                                 int64_t k) {
  const int64_t m = std::min(n, k);
  std::vector<int64_t> chosen;
  std::unordered_set<int64_t> taken;
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = n - m + j;
    const int64_t t = std::min(static_cast<int64_t>(uniform(seed, group, run, j) * (i + 1)), i);
    const int64_t pick = taken.count(t) ? i : t;
    taken.insert(pick);
    chosen.push_back(pick);
  }
  chosen.resize(k, chosen.front());
  return chosen;
}

struct State {
  Plan plan;
  at::Tensor xc, xnorm;     // centred sorted points and their squared norms
  at::Tensor point_group;   // (N) int64, group of each sorted point
  at::Tensor lengths;       // (G) int64, points per group
  std::vector<double> tol;  // absolute tolerance per group
  std::vector<int64_t> live;  // runs of non-empty groups

  // sums along the points of each group: (B, N) -> (B, G), in a fixed order.
  at::Tensor group_sums(const at::Tensor& values) const {
    const auto lengths_b = lengths.unsqueeze(0).expand({values.size(0), plan.groups}).contiguous();
    return at::segment_reduce(values, "sum", lengths_b, {}, {}, /*axis=*/1, false, 0);
  }
};

// (R * G * k) point indices of k-means++ seeds for every run, (G * R, k).
at::Tensor kmeanspp(const Kernels& kern, const State& st, uint64_t seed) {
  const Plan& plan = st.plan;
  const int64_t G = plan.groups, R = plan.n_init, k = plan.k, N = plan.n;
  const int64_t trials = 2 + static_cast<int64_t>(std::log(static_cast<double>(k)));
  const auto dev = st.xc.device();
  const auto lopt = st.xc.options().dtype(at::kLong);
  const auto dopt = st.xc.options().dtype(at::kDouble);
  const RunSet all = make_runset(st.live, G, R, dev);

  // Draw 0 picks the first centre; draw 1 + (c - 1) * trials + t is trial t of centre c.
  const int64_t draws = 1 + (k - 1) * trials;
  auto u_host = at::zeros({G * R, draws}, at::kDouble);
  std::vector<int64_t> first(G * R, 0);
  for (int64_t run : st.live) {
    const int64_t g = run / R, n = plan.offsets[g + 1] - plan.offsets[g];
    double* u = u_host.data_ptr<double>() + run * draws;
    for (int64_t i = 0; i < draws; ++i) u[i] = uniform(seed, g, run % R, i);
    first[run] = plan.offsets[g] + std::min(static_cast<int64_t>(u[0] * n), n - 1);
  }
  const auto u_trials = u_host.slice(1, 1).to(dev).view({G, R, k - 1, trials}).permute({1, 0, 2, 3});  // (R, G, k - 1, trials)
  auto chosen = at::zeros({G * R, k}, lopt);
  chosen.select(1, 0).copy_(to_device(first, dev));

  auto closest = at::full({R, N}, std::numeric_limits<double>::infinity(), dopt);
  auto cand = at::empty({trials, R, N}, dopt);
  {
    const auto idx = chosen.select(1, 0).index_select(0, all.runs_dev);
    auto out = cand.narrow(0, 0, 1);
    kern.candidates(plan, all, st.xc, st.xnorm, st.xc.index_select(0, idx),
                    st.xnorm.index_select(0, idx), 1, closest, out);
    closest.copy_(cand.select(0, 0));
  }
  std::vector<int64_t> nonempty;
  for (int64_t g = 0; g < G; ++g) {
    if (plan.offsets[g + 1] > plan.offsets[g]) nonempty.push_back(g);
  }
  auto idx = at::zeros({R, G, trials}, lopt);
  for (int64_t c = 1; c < k; ++c) {
    // Sample `trials` points of every run with probability proportional to
    // closest: searchsorted of u * total in the cumsum over the group (per
    // group, so that a group's draws do not depend on the other groups).
    for (int64_t g : nonempty) {
      const int64_t o0 = plan.offsets[g], o1 = plan.offsets[g + 1];
      const auto cs = closest.slice(1, o0, o1).cumsum(1);  // (R, n)
      const auto values = u_trials.select(1, g).select(1, c - 1) * cs.slice(1, o1 - o0 - 1);
      idx.select(1, g).copy_(at::searchsorted(cs, values).clamp_max_(o1 - o0 - 1) + o0);
    }
    const auto slot_idx =
        idx.permute({1, 0, 2}).reshape({G * R, trials}).index_select(0, all.runs_dev).reshape({-1});
    kern.candidates(plan, all, st.xc, st.xnorm, st.xc.index_select(0, slot_idx),
                    st.xnorm.index_select(0, slot_idx), trials, closest, cand);
    const auto pots = st.group_sums(cand.view({trials * R, N})).view({trials, R, G});
    const auto best = pots.argmin(0);  // (R, G), first minimum
    closest = cand.gather(0, best.index_select(1, st.point_group).unsqueeze(0)).squeeze(0);
    chosen.select(1, c).copy_(idx.gather(2, best.unsqueeze(2)).squeeze(2).t().reshape({-1}));
  }
  return chosen.clamp_(0, N - 1);
}

// Moves the points farthest from their centre into the empty clusters of the
// runs (scikit-learn's _relocate_empty_clusters_dense); rare, so plain ATen.
// Returns sums itself when no cluster is empty, else a relocated copy (sums
// stays the sums of the labels); counts is updated in place.
at::Tensor relocate_empty(const State& st, const RunSet& rs, const at::Tensor& labels,
                          const at::Tensor& mind, const at::Tensor& label_sums,
                          at::Tensor& counts) {
  const auto has_empty = to_host<uint8_t>(counts.index_select(0, rs.runs_dev).eq(0).any(1));
  if (std::none_of(has_empty.begin(), has_empty.end(), [](uint8_t e) { return e != 0; })) {
    return label_sums;
  }
  auto sums = label_sums.clone();
  for (int64_t s = 0; s < rs.size(); ++s) {
    if (!has_empty[s]) continue;
    const int64_t run = rs.runs[s], g = run / st.plan.n_init, r = run % st.plan.n_init;
    const int64_t o0 = st.plan.offsets[g], o1 = st.plan.offsets[g + 1];
    const auto dist = mind.select(0, r).slice(0, o0, o1);
    if (dist.max().item<double>() == 0.0) continue;  // every point on its centre
    const auto cnt = to_host<int64_t>(counts.select(0, run));
    std::vector<int64_t> empty;
    for (int64_t j = 0; j < st.plan.k; ++j) {
      if (cnt[j] == 0) empty.push_back(j);
    }
    const int64_t moves = std::min<int64_t>(static_cast<int64_t>(empty.size()), o1 - o0);
    const auto far = std::get<1>(at::sort(dist, /*stable=*/true, 0, /*descending=*/true));
    const auto far_h = to_host<int64_t>(far.slice(0, 0, moves));
    const auto old_h = to_host<int64_t>(labels.select(0, r).slice(0, o0, o1).index_select(0, far.slice(0, 0, moves)));
    auto run_sums = sums.select(0, run);
    auto run_counts = counts.select(0, run);
    for (int64_t i = 0; i < moves; ++i) {
      const auto point = st.xc.select(0, o0 + far_h[i]).to(at::kDouble);
      run_sums.select(0, old_h[i]).sub_(point);
      run_counts.select(0, old_h[i]).sub_(1);
      run_sums.select(0, empty[i]).copy_(point);
      run_counts.select(0, empty[i]).fill_(1);
    }
  }
  return sums;
}

}  // namespace

double uniform(uint64_t seed, int64_t group, int64_t run, int64_t draw) {
  uint64_t key = mix64(seed ^ 0x243F6A8885A308D3ULL);
  key = mix64(key ^ static_cast<uint64_t>(group));
  key = mix64(key ^ static_cast<uint64_t>(run));
  const uint64_t z = mix64(key + static_cast<uint64_t>(draw + 1) * 0x9E3779B97F4A7C15ULL);
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run(
    const Kernels& kern, const at::Tensor& x_in, const at::Tensor& groups_in, int64_t G,
    int64_t k, int64_t R, int64_t max_iter, double tol, int64_t seed_in,
    const std::string& init) {
  check_kmeans_args(x_in, groups_in, G, k, R, max_iter, tol, init);
  const uint64_t seed = static_cast<uint64_t>(seed_in);
  const auto x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  const auto dev = x.device();
  const auto lopt = x.options().dtype(at::kLong);
  const auto dopt = x.options().dtype(at::kDouble);
  if (N == 0) {
    return {at::empty({0}, lopt), at::full({G, k, D}, NAN, x.options()), at::zeros({G}, dopt),
            at::zeros({G}, lopt)};
  }
  {
    const auto [lo, hi] = at::aminmax(x);  // NaN propagates
    TORCH_CHECK(std::isfinite(lo.item<double>()) && std::isfinite(hi.item<double>()),
                "kmeans: x must be finite, but it holds NaN or infinity");
  }
  {
    const auto [lo, hi] = at::aminmax(groups_in);
    const int64_t lo_h = lo.item<int64_t>(), hi_h = hi.item<int64_t>();
    TORCH_CHECK(lo_h >= 0 && hi_h < G, "kmeans: groups must lie in [0, num_groups) = [0, ", G,
                "), got values in [", lo_h, ", ", hi_h, "]");
  }

  // Sort by group (stable) unless sorted already.
  State st;
  Plan& plan = st.plan;
  at::Tensor order;
  at::Tensor xs = x;
  st.point_group = groups_in.contiguous();
  if (N > 1 && !st.point_group.slice(0, 1).ge(st.point_group.slice(0, 0, N - 1)).all().item<bool>()) {
    order = at::argsort(st.point_group, /*stable=*/true);
    st.point_group = st.point_group.index_select(0, order);
    xs = x.index_select(0, order);
  }
  plan.n = N;
  plan.d = D;
  plan.groups = G;
  plan.n_init = R;
  plan.k = k;
  const auto offsets = at::searchsorted(st.point_group, at::arange(G + 1, lopt));
  plan.offsets = to_host<int64_t>(offsets);
  st.lengths = offsets.slice(0, 1) - offsets.slice(0, 0, G);
  plan.tiles = cut(plan.offsets, kern.tile_rows(N, D, x.element_size()), nullptr);
  plan.tiles_dev = to_device(plan.tiles, dev).view({-1, 3});
  plan.segments = cut(plan.offsets, kern.segment_rows(N), &plan.segment_off);
  plan.segments_dev = to_device(plan.segments, dev).view({-1, 3});
  plan.segment_off_dev = to_device(plan.segment_off, dev);

  // Centre every group on its mean; squared norms; tolerances.
  const auto mean = at::zeros({G, D}, x.options());
  st.xc = at::empty_like(xs);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t o0 = plan.offsets[g], o1 = plan.offsets[g + 1];
    if (o1 > o0) {
      const auto rows = xs.slice(0, o0, o1);
      mean.select(0, g).copy_(rows.sum(0) / static_cast<double>(o1 - o0));
      auto out = st.xc.slice(0, o0, o1);
      at::sub_out(out, rows, mean.select(0, g));
    }
  }
  st.xnorm = at::linalg_vector_norm(st.xc, 2, 1).to(at::kDouble).square_();
  const auto sq_sum = to_host<double>(at::segment_reduce(st.xnorm, "sum", st.lengths, {}, {}, 0, false, 0));
  st.tol.assign(G, 0.0);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n = plan.offsets[g + 1] - plan.offsets[g];
    if (n > 0) {
      st.tol[g] = tol * sq_sum[g] / (static_cast<double>(n) * static_cast<double>(D));
      for (int64_t r = 0; r < R; ++r) st.live.push_back(g * R + r);
    }
  }
  const RunSet all = make_runset(st.live, G, R, dev);

  // Seeds.
  at::Tensor chosen;
  if (init == "k-means++") {
    chosen = kmeanspp(kern, st, seed);
  } else {
    std::vector<int64_t> idx(G * R * k, 0);
    for (int64_t run : st.live) {
      const int64_t g = run / R;
      const auto pick = random_init(seed, g, run % R, plan.offsets[g + 1] - plan.offsets[g], k);
      for (int64_t j = 0; j < k; ++j) idx[run * k + j] = plan.offsets[g] + pick[j];
    }
    chosen = to_device(idx, dev);
  }
  auto centers = st.xc.index_select(0, chosen.reshape({-1})).view({G * R, k, D});
  auto cnorm = st.xnorm.index_select(0, chosen.reshape({-1})).view({G * R, k});

  // Lloyd iterations, in lockstep over the runs that have not converged.
  auto labels = at::full({R, N}, -1, x.options().dtype(at::kInt));
  auto prev_labels = labels.clone();  // the labels `sums` belongs to
  auto mind = at::zeros({R, N}, dopt);
  auto counts = at::zeros({G * R, k}, lopt);
  auto changed = at::zeros({G * R}, lopt);
  auto sums = at::zeros({G * R, k, D}, dopt);
  auto shift = at::zeros({G * R}, dopt);
  const auto flat_centers = centers.view({G * R * k, D});
  std::vector<int64_t> n_iter(G * R, 0);
  std::vector<char> strict(G * R, 0);
  std::vector<int64_t> active = st.live;
  for (int64_t it = 0; it < max_iter && !active.empty(); ++it) {
    const RunSet rs = make_runset(active, G, R, dev);
    const auto rows = column_rows(rs, k);
    counts.zero_();
    changed.zero_();
    kern.assign(plan, rs, st.xc, st.xnorm, flat_centers.index_select(0, rows),
                cnorm.view({-1}).index_select(0, rows), labels, mind, counts, changed);
    kern.cluster_sums(plan, rs, st.xc, labels, prev_labels, sums);
    prev_labels.copy_(labels);
    kern.finalize(rs, relocate_empty(st, rs, labels, mind, sums, counts), counts, centers,
                  cnorm, shift);
    const auto changed_h = to_host<int64_t>(changed.index_select(0, rs.runs_dev));
    const auto shift_h = to_host<double>(shift.index_select(0, rs.runs_dev));
    std::vector<int64_t> next;
    for (int64_t s = 0; s < rs.size(); ++s) {
      const int64_t run = rs.runs[s];
      n_iter[run] = it + 1;
      if (changed_h[s] == 0) {
        strict[run] = 1;  // labels unchanged: centres are the means of the labels
      } else if (shift_h[s] > st.tol[run / R]) {
        next.push_back(run);
      }
    }
    active.swap(next);
  }

  // Labels of the final centres where they may differ (tolerance, max_iter).
  std::vector<int64_t> redo;
  for (int64_t run : st.live) {
    if (!strict[run]) redo.push_back(run);
  }
  if (!redo.empty()) {
    const RunSet rs = make_runset(redo, G, R, dev);
    const auto rows = column_rows(rs, k);
    kern.assign(plan, rs, st.xc, st.xnorm, flat_centers.index_select(0, rows),
                cnorm.view({-1}).index_select(0, rows), labels, mind, counts, changed);
  }

  // Inertia of every run; the best run of a group is the first one within a
  // relative kBestRtol of the lowest inertia.
  auto dist = at::zeros({R, N}, dopt);
  kern.point_dist(plan, all, st.xc, centers, labels, dist);
  const auto inertia_rg = st.group_sums(dist);  // (R, G)
  const auto lowest = std::get<0>(inertia_rg.min(0));
  const auto best = (inertia_rg <= lowest * (1 + kBestRtol)).to(at::kInt).argmax(0);  // (G)
  const auto best_h = to_host<int64_t>(best);
  auto labels_out = labels.gather(0, best.index_select(0, st.point_group).unsqueeze(0))
                        .squeeze(0)
                        .to(at::kLong);
  if (order.defined()) labels_out = labels_out.index_select(0, at::argsort(order));
  const auto best_runs = at::arange(G, lopt) * R + best;
  auto centroids = centers.index_select(0, best_runs) + mean.unsqueeze(1);
  centroids = at::where(st.lengths.view({G, 1, 1}) > 0, centroids, NAN);
  const auto inertia = inertia_rg.gather(0, best.unsqueeze(0)).squeeze(0);
  std::vector<int64_t> n_iter_out(G, 0);
  for (int64_t g = 0; g < G; ++g) {
    if (plan.offsets[g + 1] > plan.offsets[g]) n_iter_out[g] = n_iter[g * R + best_h[g]];
  }
  return {labels_out, centroids, inertia, to_device(n_iter_out, dev)};
}

}  // namespace kmeans
}  // namespace wsss_fast
