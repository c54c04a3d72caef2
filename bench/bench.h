// flashattn-bench: shared pieces of the CPU and GPU modes.
//
// Every measurement becomes one Row of a table. Rows of the same problem share
// a `group`; inside a group the row named by the baseline (torch's number, run
// in the same process tree on the same machine) gives the ratio column.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashattn {
namespace bench {

struct Options {
  bool gpu = false;     // --gpu: CUDA rungs vs torch SDPA flash/cudnn
  bool quick = false;   // --quick: a seconds-long smoke sweep
  bool bwd = false;     // --bwd: backward sweep
  bool decode = false;  // --decode: Nq = 1 KV-cache sweep (GPU)
  bool softmax = false;  // --softmax: only the row-softmax sweep (GPU)
  bool varlen = false;   // --varlen: packed ragged batch (cu_seqlens) vs the dense batch of equal tokens (GPU)
  bool ring = false;     // --ring: ring attention over 1..G GPUs (NCCL) vs one GPU (bench_ring.cpp)
  bool diag = false;     // --diag: the Hopper forward timed five ways (bench_diag.cpp)
  bool torch = true;    // --no-torch: skip bench/torch_sdpa.py
  // Shape overrides; 0 / -1 = the sweep's default.
  int64_t b = 0, h = 0, hkv = 0, n = 0, nk = 0, d = 0;
  int causal = -1;     // -1 = both
  std::string dtype;   // "" = fp32 on the CPU, bf16 on the GPU
  int reps = 0;        // 0 = default (GPU >= 20, CPU 5, both capped by a time budget)
  int threads = 0;     // CPU threads (0 = all)
  int splits = 0;      // --splits S: num_splits of the decode sweep's calls (0 = the kernel's heuristic)
  // GPU mode bounds: our rungs stop being timed after max_seconds (the rest are
  // reported as skipped), and one measurement running longer than row_timeout
  // seconds (a hung kernel) ends the run with the partial table and summary.
  int max_seconds = 150;
  int row_timeout = 60;
};

enum class Metric { kFlops, kBandwidth };

struct Row {
  int group = 0;         // rows of one problem share it
  int ratio_group = -1;  // group whose baseline row gives the ratio (-1 = own group)
  std::string section;   // fwd / bwd / decode / softmax / varlen
  std::string name;      // rung, CPU kernel or torch backend
  std::string dtype;
  int64_t b = 0, hq = 0, hkv = 0, nq = 0, nk = 0, d = 0;
  bool causal = false;
  std::string note;      // e.g. "paged 16", "online"
  Metric metric = Metric::kFlops;
  double work = 0;       // FLOPs or bytes of the measurement
  double ms = -1;        // median; < 0 when it did not run
  double loop_ms = -1;   // GPU: total time of the timed reps / reps (one event pair around them)
  double host_ms = -1;   // GPU: host time to enqueue one rep (if above ms, the GPU idles between calls)
  int reps = 0;
  std::string error;     // refusal / failure message when ms < 0
  bool is_torch = false;
};

// FlashAttention's FLOP convention: fwd 4*B*H*Nq*Nk*D, halved when causal; bwd 2.5x fwd.
double attention_flops(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t d, bool causal, bool bwd);

double median(std::vector<double> v);

// Progress on stderr ("[i/n] what"), one line each (overwritten on a terminal).
void progress(int i, int n, const std::string& what);
void progress_done();

// Prints the rows as a table. scale_name: "GFLOPS" or "TFLOPS" (and its divisor);
// baseline: the name whose row of the same group is the ratio's denominator
// (ratio = baseline ms / our ms, > 1 means faster than the baseline).
void print_table(const std::vector<Row>& rows, const char* flops_unit, double flops_div,
                 const std::string& baseline, const std::string& ratio_title);
// The short last table: per section and name, shapes run / refused, mean and best
// throughput, and the geometric-mean ratio vs the baseline.
void print_summary(const std::vector<Row>& rows, const char* flops_unit, double flops_div,
                   const std::string& baseline, const std::string& title);

// Runs bench/torch_sdpa.py on a request (JSON text) and fills ms/error of the
// torch rows whose index is given in the request's "id". Returns false (and a
// reason) when python3/torch are not available; the table then has no torch rows.
bool run_torch(const std::string& request_json, std::vector<Row>& rows, std::string* why);

// JSON helpers for building requests.
std::string json_str(const std::string& s);

int run_cpu(const Options& o);
int run_gpu(const Options& o);
int run_ring(const Options& o);
int run_diag(const Options& o);  // bench_diag.cpp

}  // namespace bench
}  // namespace flashattn
