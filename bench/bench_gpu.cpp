// flashattn-bench GPU mode: every CUDA rung through the public API, timed with
// CUDA events (warm-up, median of >= 20 reps, random normal inputs), next to
// torch's SDPA flash and cuDNN backends measured by bench/torch_sdpa.py in the
// same run. Plain C++ against the CUDA runtime API; every CUDA call is checked.
//
// Sweeps (issues 4-8): 16k tokens per batch and hidden 2048, so for N in
// 512..16k: B = 16384 / N and H = 2048 / D for D in {64, 128, 256}, causal and not.
//   --gpu            forward of naive (where S fits), fa1 (N <= 2k), fa2, hopper, auto; row softmax GB/s
//   --gpu --bwd      backward of fa2, hopper, auto and hopper_det (hopper, deterministic = true)
//                    (+ FLASHATTN_BENCH_HOPPER_BWD_VARIANTS rows)
//   --gpu --decode   Nq = 1 over K/V: contiguous, a KV cache (seqused_k), paged (page 16 / 256): KV-read GB/s
//   --gpu --varlen   a packed ragged batch (cu_seqlens) vs the dense batch of the same 16k tokens: TFLOPS
//                    (with --bwd: the backward of both)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench.h"
#include "common/dtype.h"
#include "flashattn/flashattn.h"

#if FLASHATTN_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/softmax_rows.cuh"  // the pinned two-pass long-row path, for comparison
#endif

namespace flashattn {
namespace bench {

#if !FLASHATTN_WITH_CUDA

int run_gpu(const Options&) {
  std::printf("--gpu: this flashattn-bench was built without CUDA (configure with -DFLASHATTN_CUDA=ON)\n");
  return 1;
}

#else

namespace {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#define BENCH_CUDA(expr)                                                                           \
  do {                                                                                             \
    const cudaError_t err_ = (expr);                                                               \
    if (err_ != cudaSuccess) throw CudaError(std::string(#expr) + ": " + cudaGetErrorString(err_)); \
  } while (0)

// Device memory, freed on scope exit.
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t bytes) : bytes_(bytes) {
    if (bytes) BENCH_CUDA(cudaMalloc(&ptr_, bytes));
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DevBuf() {
    if (ptr_) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

DType parse_dtype(const std::string& s) {
  if (s == "fp16") return DType::kFloat16;
  if (s == "fp32") return DType::kFloat32;
  return DType::kBFloat16;
}
std::string short_dtype(DType d) {
  return d == DType::kFloat32 ? "fp32" : d == DType::kFloat16 ? "fp16" : "bf16";
}

std::string status_text(const Status& st) {
  if (st.code == StatusCode::kUnsupported) return "unsupported: " + st.message;
  return std::string(status_code_name(st.code)) + ": " + st.message;
}

// Random normal values, generated once per dtype on the host and uploaded;
// tensors are filled by device-to-device copies of pool windows at varying offsets.
class RandomPool {
 public:
  static constexpr int64_t kElems = (int64_t{1} << 22) + 1237;  // odd size: windows never line up with rows
  const DevBuf& get(DType dt) {
    DevBuf& buf = pools_[static_cast<int>(dt)];
    if (!buf.get()) {
      std::mt19937_64 rng(7 + static_cast<int>(dt));
      std::normal_distribution<float> dist(0.0f, 1.0f);
      std::vector<uint8_t> host(static_cast<size_t>(kElems * dtype_size(dt)));
      for (int64_t i = 0; i < kElems; ++i) store_from_float(host.data(), dt, i, dist(rng));
      buf = DevBuf(host.size());
      BENCH_CUDA(cudaMemcpy(buf.get(), host.data(), host.size(), cudaMemcpyHostToDevice));
    }
    return buf;
  }
  // Fills n elements of dst with pool values (never zeros).
  void fill(void* dst, int64_t n, DType dt, uint64_t seed) {
    const DevBuf& pool = get(dt);
    const int64_t es = dtype_size(dt);
    const int64_t chunk = kElems / 2;
    uint64_t off = seed * 7919u;
    for (int64_t done = 0; done < n; done += chunk) {
      const int64_t len = std::min(chunk, n - done);
      off = (off * 6364136223846793005ull + 1442695040888963407ull);
      const int64_t start = static_cast<int64_t>(off % static_cast<uint64_t>(kElems - len));
      BENCH_CUDA(cudaMemcpy(static_cast<char*>(dst) + done * es, static_cast<const char*>(pool.get()) + start * es,
                            static_cast<size_t>(len * es), cudaMemcpyDeviceToDevice));
    }
  }

 private:
  DevBuf pools_[3];
};

// Times fn(set) with CUDA events on the legacy default stream (the stream the
// library runs on when params.stream is null): one timed warm-up call (a
// refusal ends here), ~200 ms more warm-up, then `reps` calls (>= 20; 3 for a rung
// slower than 250 ms; none past 1 s: the first call is then the sample), median.
void time_gpu(Row& row, int min_reps, int sets, const std::function<Status(int)>& fn) {
  cudaEvent_t e0, e1;
  BENCH_CUDA(cudaEventCreate(&e0));
  BENCH_CUDA(cudaEventCreate(&e1));
  std::vector<cudaEvent_t> starts, stops;
  auto cleanup = [&] {
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    for (cudaEvent_t e : starts) cudaEventDestroy(e);
    for (cudaEvent_t e : stops) cudaEventDestroy(e);
  };
  try {
    BENCH_CUDA(cudaEventRecord(e0));
    Status st = fn(0);
    BENCH_CUDA(cudaEventRecord(e1));
    BENCH_CUDA(cudaEventSynchronize(e1));
    BENCH_CUDA(cudaGetLastError());
    if (!st.ok()) {
      row.error = status_text(st);
      // A failed launch may have broken the context: find out now.
      if (st.code == StatusCode::kCudaError) BENCH_CUDA(cudaDeviceSynchronize());
      cleanup();
      return;
    }
    float first = 0;
    BENCH_CUDA(cudaEventElapsedTime(&first, e0, e1));
    if (first > 1000.0f) {  // very slow: the warm-up call is the measurement
      row.ms = first;
      row.reps = 1;
      cleanup();
      return;
    }
    int reps = min_reps;
    if (first > 250.0f) reps = 3;
    else if (first * reps < 400.0f) reps = std::min(100, std::max(reps, static_cast<int>(400.0f / std::max(first, 1e-3f))));
    // Sustained warm-up (~200 ms of back-to-back calls, 2..200 of them) so every
    // row, ours and torch's (bench/torch_sdpa.py does the same), is timed with
    // the clocks settled under load rather than ramping up from idle.
    if (first <= 250.0f) {
      const int warm = std::min(200, std::max(2, static_cast<int>(200.0f / std::max(first, 1e-3f))));
      for (int i = 1; i <= warm; ++i) {
        st = fn(i % sets);
        if (!st.ok()) break;
      }
    }
    starts.resize(reps), stops.resize(reps);
    for (int i = 0; i < reps; ++i) {
      BENCH_CUDA(cudaEventCreate(&starts[i]));
      BENCH_CUDA(cudaEventCreate(&stops[i]));
    }
    BENCH_CUDA(cudaEventRecord(e0));
    const auto host0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps && st.ok(); ++i) {
      BENCH_CUDA(cudaEventRecord(starts[i]));
      st = fn(i % sets);
      BENCH_CUDA(cudaEventRecord(stops[i]));
    }
    BENCH_CUDA(cudaEventRecord(e1));
    row.host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host0).count() / reps;
    BENCH_CUDA(cudaDeviceSynchronize());
    BENCH_CUDA(cudaGetLastError());
    if (!st.ok()) {
      row.error = status_text(st);
      cleanup();
      return;
    }
    std::vector<double> t(reps);
    for (int i = 0; i < reps; ++i) {
      float ms = 0;
      BENCH_CUDA(cudaEventElapsedTime(&ms, starts[i], stops[i]));
      t[i] = ms;
    }
    row.ms = median(t);
    row.reps = reps;
    float loop = 0;
    BENCH_CUDA(cudaEventElapsedTime(&loop, e0, e1));
    row.loop_ms = loop / reps;
  } catch (const CudaError& e) {
    row.error = (row.error.empty() ? "" : row.error + "; ") + "CUDA error: " + e.what();
    row.ms = -1;
    cleanup();
    throw;
  }
  cleanup();
}

// How many input sets to rotate so a small working set does not sit in L2 (50 MB on H100).
int input_sets(double set_bytes) {
  if (set_bytes <= 0) return 1;
  return static_cast<int>(std::max(1.0, std::min(4.0, 128e6 / set_bytes)));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string row_desc(const Row& r) {
  return r.section + " " + r.name + " " + r.dtype + " B=" + std::to_string(r.b) + " H=" + std::to_string(r.hq) +
         " N=" + std::to_string(r.nk) + " D=" + std::to_string(r.d) + (r.causal ? " causal" : "") +
         (r.note.empty() ? "" : " " + r.note);
}

// A hung kernel would block the run forever inside a CUDA sync. The watchdog
// thread notices a measurement running past the limit, prints what was
// measured so far (the main thread is blocked, so the rows are not changing)
// and ends the process.
class Watchdog {
 public:
  Watchdog(const std::vector<Row>* rows, int limit_s, std::string title)
      : rows_(rows), limit_s_(limit_s), title_(std::move(title)) {
    if (limit_s_ > 0) thread_ = std::thread([this] { loop(); });
  }
  ~Watchdog() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void begin(const Row* r) {
    current_ = r;
    start_ = now_s();
  }
  void end() { start_ = 0.0; }

 private:
  void loop() {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      const double t0 = start_;
      if (t0 > 0 && t0 != warned_ && now_s() - t0 > 15.0) {
        warned_ = t0;
        const Row* r = current_;
        std::fprintf(stderr, "\nslow: %s still running after 15 s (the run ends at %d s, --row-timeout)\n",
                     r ? row_desc(*r).c_str() : "?", limit_s_);
      }
      if (t0 > 0 && now_s() - t0 > limit_s_) {
        const Row* r = current_;
        std::printf("\nTIMEOUT: %s still running after %d s (--row-timeout): a hung or pathologically slow "
                    "kernel; partial results follow, torch not run\n",
                    r ? row_desc(*r).c_str() : "?", limit_s_);
        print_table(*rows_, "TFLOPS", 1e12, "cudnn", "vs cudnn");
        print_summary(*rows_, "TFLOPS", 1e12, "cudnn", title_ + " (partial: timed out)");
        std::fflush(stdout);
        std::fflush(stderr);
        std::_Exit(3);
      }
    }
  }
  const std::vector<Row>* rows_;
  int limit_s_;
  std::string title_;
  std::atomic<bool> stop_{false};
  std::atomic<double> start_{0.0};
  double warned_ = 0.0;  // start time of the measurement already warned about (watchdog thread only)
  std::atomic<const Row*> current_{nullptr};
  std::thread thread_;
};

struct Sweep {
  Options o;
  DType dt;
  std::string dts;
  int reps;
  std::vector<Row> rows;
  std::vector<std::string> torch_req;
  int group = 0;
  Watchdog* watchdog = nullptr;
  int done = 0, total = 0;

  // Times one row under the watchdog and reports it on stderr.
  void measure(Row& r, int sets, const std::function<Status(int)>& fn) {
    watchdog->begin(&r);
    try {
      time_gpu(r, reps, sets, fn);
    } catch (...) {
      watchdog->end();
      throw;
    }
    watchdog->end();
    char res[96];
    if (r.ms > 0) std::snprintf(res, sizeof res, "%.4f ms (loop mean %.4f, host enqueue %.4f)", r.ms, r.loop_ms,
                                  r.host_ms);
    else std::snprintf(res, sizeof res, "%.80s", r.error.c_str());
    progress(++done, total, row_desc(r) + ": " + res);
  }

  void add_torch(const Row& base, const char* backend, bool bwd) {
    Row t = base;
    t.name = std::string("torch_") + backend;
    if (std::string(backend) == "cudnn") t.name = "cudnn";
    t.is_torch = true;
    t.error = "torch not run";
    rows.push_back(t);
    std::ostringstream js;
    js << "{\"id\": " << rows.size() - 1 << ", \"device\": \"cuda\", \"backend\": " << json_str(backend)
       << ", \"dtype\": " << json_str(t.dtype) << ", \"reps\": " << reps;
    if (t.section == "softmax") {
      js << ", \"op\": \"softmax\", \"rows\": " << t.nq << ", \"cols\": " << t.nk << "}";
    } else {
      js << ", \"op\": \"attn\", \"b\": " << t.b << ", \"hq\": " << t.hq << ", \"hkv\": " << t.hkv
         << ", \"nq\": " << t.nq << ", \"nk\": " << t.nk << ", \"d\": " << t.d
         << ", \"causal\": " << (t.causal ? "true" : "false") << ", \"bwd\": " << (bwd ? "true" : "false") << "}";
    }
    torch_req.push_back(js.str());
  }
};

std::vector<int64_t> pick(int64_t given, std::vector<int64_t> sweep, std::vector<int64_t> quick, bool is_quick) {
  if (given) return {given};
  return is_quick ? quick : sweep;
}

// FLASHATTN_BENCH_HOPPER_VARIANTS="no_l2_groups,wg3": extra forward rows that run the
// Hopper kernel with FLASHATTN_HOPPER_VARIANT set to each entry (hopper_fwd.cu lists
// them), interleaved with the default rows of the same run: leave-one-out timings.
// FLASHATTN_BENCH_HOPPER_BWD_VARIANTS="atomic,bulk": the same for the backward
// (FLASHATTN_HOPPER_BWD_VARIANT, hopper_bwd.cu; the row turns the experiments gate on).
std::vector<std::string> hopper_variants(bool bwd = false) {
  std::vector<std::string> out;
  const char* env = std::getenv(bwd ? "FLASHATTN_BENCH_HOPPER_BWD_VARIANTS" : "FLASHATTN_BENCH_HOPPER_VARIANTS");
  std::stringstream list(env ? env : "");
  for (std::string v; std::getline(list, v, ',');)
    if (!v.empty()) out.push_back(v);
  return out;
}

void build_attention_sweep(Sweep& s, bool bwd) {
  const Options& o = s.o;
  const auto ns = pick(o.n, {512, 1024, 2048, 4096, 8192, 16384}, {1024, 4096}, o.quick);
  const auto ds = pick(o.d, {64, 128, 256}, {64, 128}, o.quick);
  std::vector<bool> causals = o.causal < 0 ? std::vector<bool>{false, true} : std::vector<bool>{o.causal == 1};
  for (int64_t d : ds)
    for (int64_t n : ns)
      for (bool c : causals) {
        Row base;
        base.group = s.group++;
        base.section = bwd ? "bwd" : "fwd";
        base.dtype = s.dts;
        base.b = o.b ? o.b : std::max<int64_t>(1, 16384 / n);
        base.hq = o.h ? o.h : std::max<int64_t>(1, 2048 / d);
        base.hkv = o.hkv ? o.hkv : base.hq;
        base.nq = n;
        base.nk = o.nk ? o.nk : n;
        base.d = d;
        base.causal = c;
        base.work = attention_flops(base.b, base.hq, base.nq, base.nk, d, c, bwd);
        std::vector<Kernel> rungs;
        if (bwd) {
          rungs = {Kernel::kFA2, Kernel::kHopper, Kernel::kAuto};
        } else {
          // naive materializes S = QK^T in fp32: only where it stays small.
          const double s_bytes = 4.0 * base.b * base.hq * base.nq * base.nk;
          if (s_bytes <= 4.5e9) rungs.push_back(Kernel::kNaive);
          if (n <= 2048) rungs.push_back(Kernel::kFA1);  // one thread per query row: slow past 2k
          rungs.insert(rungs.end(), {Kernel::kFA2, Kernel::kHopper, Kernel::kAuto});
        }
        for (Kernel k : rungs) {
          Row r = base;
          r.name = kernel_name(k);
          s.rows.push_back(r);
        }
        for (const std::string& v : hopper_variants(bwd)) {  // leave-one-out rows, same run
          Row r = base;
          r.name = "hopper:" + v;
          s.rows.push_back(r);
        }
        if (bwd) {  // the Hopper backward with deterministic = true
          Row r = base;
          r.name = "hopper_det";
          s.rows.push_back(r);
        }
        s.add_torch(base, "flash", bwd);
        s.add_torch(base, "cudnn", bwd);
      }
}

void build_decode_sweep(Sweep& s) {
  struct Cfg {
    int64_t b, hq, hkv, n;
  };
  std::vector<Cfg> cfgs = {{1, 32, 8, 32768}, {1, 64, 8, 131072}, {64, 32, 8, 2048}};
  if (s.o.quick) cfgs = {{1, 32, 8, 32768}, {64, 32, 8, 2048}};
  if (s.o.n || s.o.b || s.o.h)
    cfgs = {{s.o.b ? s.o.b : 1, s.o.h ? s.o.h : 32, s.o.hkv ? s.o.hkv : 8, s.o.nk ? s.o.nk : (s.o.n ? s.o.n : 32768)}};
  const int64_t d = s.o.d ? s.o.d : 128;
  // Layouts: plain contiguous K/V; contiguous KV cache (seqused_k); paged (block_table).
  // Ratios of the cache layouts are vs torch on the plain contiguous tensors.
  for (const Cfg& c : cfgs) {
    const int contiguous_group = s.group;
    for (int64_t page : {int64_t{0}, int64_t{-1}, int64_t{16}, int64_t{256}}) {
      Row base;
      base.group = s.group++;
      base.ratio_group = contiguous_group;
      base.section = "decode";
      base.dtype = s.dts;
      base.b = c.b, base.hq = c.hq, base.hkv = c.hkv, base.nq = 1, base.nk = c.n, base.d = d;
      base.note = page > 0 ? "paged " + std::to_string(page) : page < 0 ? "seqused_k" : "contiguous";
      base.metric = Metric::kBandwidth;
      base.work = 2.0 * c.b * c.n * c.hkv * d * dtype_size(s.dt);  // K and V bytes read
      for (Kernel k : {Kernel::kFA2, Kernel::kAuto}) {
        Row r = base;
        r.name = kernel_name(k);
        s.rows.push_back(r);
      }
      if (!page) {
        s.add_torch(base, "flash", false);
        s.add_torch(base, "cudnn", false);
      }
    }
  }
}

// Ragged lengths of the --varlen sweep: b sequences, mean `mean`, spread +-50 %,
// deterministic, summing to exactly b * mean.
std::vector<int64_t> varlen_lengths(int64_t b, int64_t mean) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int64_t> dist(mean / 2, mean + mean / 2);
  std::vector<int64_t> len(static_cast<size_t>(b));
  int64_t total = 0;
  for (auto& l : len) total += (l = dist(rng));
  len.back() += b * mean - total;  // the last one absorbs the difference
  if (len.back() < 1) len.back() = 1;
  return len;
}

// Varlen prefill (issue 8): 16 sequences of ragged lengths packed by cu_seqlens
// (16k tokens, hidden 2048) next to the dense batch of 16 x 1024 tokens. Work of
// the ragged batch = sum of each sequence's own FLOPs, so TFLOPS compare.
void build_varlen_sweep(Sweep& s) {
  const bool bwd = s.o.bwd;  // --varlen --bwd: the backward of the same batches
  const int64_t b = 16, mean = 1024;
  const auto len = varlen_lengths(b, mean);
  const auto ds = pick(s.o.d, {64, 128}, {128}, s.o.quick);
  for (int64_t d : ds)
    for (bool c : {false, true}) {
      for (bool ragged : {false, true}) {
        Row base;
        base.group = s.group++;
        base.section = bwd ? "varlen_bwd" : "varlen";
        base.dtype = s.dts;
        base.b = b;
        base.hq = base.hkv = 2048 / d;
        base.nq = base.nk = ragged ? *std::max_element(len.begin(), len.end()) : mean;
        base.d = d;
        base.causal = c;
        base.note = ragged ? "varlen" : "dense";
        base.work = 0.0;
        for (int64_t l : len) base.work += attention_flops(1, base.hq, ragged ? l : mean, ragged ? l : mean, d, c, bwd);
        for (Kernel k : {Kernel::kFA2, Kernel::kHopper, Kernel::kAuto}) {
          Row r = base;
          r.name = kernel_name(k);
          s.rows.push_back(r);
        }
        if (!ragged) {
          s.add_torch(base, "flash", bwd);
          s.add_torch(base, "cudnn", bwd);
        }
      }
    }
}

void build_softmax_sweep(Sweep& s) {
  struct Shape {
    int64_t rows, cols;
  };
  // Long rows / few rows (4 x 2^20, 32 x 2^18) take the split-row path: single pass,
  // next to the pinned two-pass kernels and a device copy of the same bytes.
  std::vector<Shape> shapes = {{16384, 4096}, {1024, 131072}, {4, 1 << 20}, {32, 1 << 18}};
  std::vector<DType> dts = {s.dt};
  if (s.dt != DType::kFloat32) dts.push_back(DType::kFloat32);
  if (s.o.quick) shapes = {{8192, 4096}}, dts = {s.dt};
  for (DType dt : dts)
    for (const Shape& sh : shapes) {
      Row base;
      base.group = s.group++;
      base.section = "softmax";
      base.dtype = short_dtype(dt);
      base.b = base.hq = base.hkv = 1;
      base.nq = sh.rows, base.nk = sh.cols;
      base.metric = Metric::kBandwidth;
      base.work = 2.0 * sh.rows * sh.cols * dtype_size(dt);  // read x + write y
      for (SoftmaxVariant v : {SoftmaxVariant::kNaive, SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) {
        Row r = base;
        r.name = std::string("softmax_") + softmax_variant_name(v);
        r.note = softmax_variant_name(v);
        s.rows.push_back(r);
      }
      if (sh.cols > 8192) {  // split rows: the old two-kernel path, pinned
        Row r = base;
        r.name = "softmax_online_2pass";
        r.note = "online 2-pass";
        s.rows.push_back(r);
      }
      Row copy = base;  // cudaMemcpyAsync of x to y: the read-once write-once ceiling
      copy.name = "copy";
      copy.note = "copy";
      s.rows.push_back(copy);
      Row t = base;
      t.name = "torch";
      t.is_torch = true;
      t.error = "torch not run";
      s.rows.push_back(t);
      std::ostringstream js;
      js << "{\"id\": " << s.rows.size() - 1 << ", \"op\": \"softmax\", \"device\": \"cuda\", \"backend\": \"softmax\""
         << ", \"dtype\": " << json_str(t.dtype) << ", \"rows\": " << sh.rows << ", \"cols\": " << sh.cols
         << ", \"reps\": " << s.reps << "}";
      s.torch_req.push_back(js.str());
    }
}

DType dtype_of(const Row& r) { return parse_dtype(r.dtype); }

// Runs all non-torch rows of one group (they share buffers).
void run_group(Sweep& s, std::vector<Row*>& group, RandomPool& pool) {
  const Row& g = *group.front();
  const DType dt = dtype_of(g);
  const int64_t es = dtype_size(dt);

  if (g.section == "softmax") {
    const int64_t n = g.nq * g.nk;
    const int sets = input_sets(2.0 * n * es);
    std::vector<DevBuf> xs, ys;
    for (int i = 0; i < sets; ++i) {
      xs.emplace_back(n * es), ys.emplace_back(n * es);
      pool.fill(xs.back().get(), n, dt, 100 + i);
    }
    for (Row* r : group) {
      SoftmaxParams p;
      p.rows = g.nq;
      p.cols = p.x_row_stride = p.y_row_stride = g.nk;
      p.dtype = dt;
      p.device = Device::kCUDA;
      p.variant = r->note == "naive" ? SoftmaxVariant::kNaive
                  : r->note == "safe" ? SoftmaxVariant::kSafe
                                      : SoftmaxVariant::kOnline;
      s.measure(*r, sets, [&](int i) {
        p.x = xs[i].get();
        p.y = ys[i].get();
        if (r->note == "copy") {
          BENCH_CUDA(cudaMemcpyAsync(p.y, p.x, static_cast<size_t>(n * es), cudaMemcpyDeviceToDevice, nullptr));
          return Status::Ok();
        }
        if (r->note == "online 2-pass") return cuda::launch_softmax_rows(p, nullptr, nullptr, cuda::LongRowPath::kTwoPass);
        return softmax(p);
      });
    }
    return;
  }

  // Attention: q [b, nq, hq, d], k/v [b, nk, hkv, d] (or page pools), o like q.
  const bool bwd = g.section == "bwd" || g.section == "varlen_bwd";
  const bool decode = g.section == "decode";
  const int64_t page = decode && g.note.rfind("paged", 0) == 0 ? std::stoll(g.note.substr(6)) : 0;
  const int64_t pages_per_seq = page ? (g.nk + page - 1) / page : 0;
  const int64_t num_pages = page ? g.b * pages_per_seq : 0;
  // --varlen: q/k/v/o packed [total, heads, d] by cu_seqlens (nq / nk are the max lengths).
  const bool ragged = (g.section == "varlen" || g.section == "varlen_bwd") && g.note == "varlen";
  const std::vector<int64_t> ragged_len = ragged ? varlen_lengths(g.b, 1024) : std::vector<int64_t>{};
  const int64_t total = ragged ? std::accumulate(ragged_len.begin(), ragged_len.end(), int64_t{0}) : 0;
  const int64_t nq_el = (ragged ? total : g.b * g.nq) * g.hq * g.d;
  const int64_t nk_el = page ? num_pages * page * g.hkv * g.d : (ragged ? total : g.b * g.nk) * g.hkv * g.d;
  const double set_bytes = static_cast<double>(2 * nq_el + 2 * nk_el) * es;
  const int sets = input_sets(set_bytes);

  struct Set {
    DevBuf q, k, v, o, lse, dout, dq, dk, dv;
  };
  std::vector<Set> bufs(sets);
  for (int i = 0; i < sets; ++i) {
    Set& b = bufs[i];
    b.q = DevBuf(nq_el * es), b.k = DevBuf(nk_el * es), b.v = DevBuf(nk_el * es), b.o = DevBuf(nq_el * es);
    b.lse = DevBuf(static_cast<size_t>(g.b * g.hq * g.nq * 4));
    pool.fill(b.q.get(), nq_el, dt, 10 * i + 1);
    pool.fill(b.k.get(), nk_el, dt, 10 * i + 2);
    pool.fill(b.v.get(), nk_el, dt, 10 * i + 3);
    if (bwd) {
      b.dout = DevBuf(nq_el * es), b.dq = DevBuf(nq_el * es), b.dk = DevBuf(nk_el * es), b.dv = DevBuf(nk_el * es);
      pool.fill(b.dout.get(), nq_el, dt, 10 * i + 4);
    }
  }
  // KV cache: every sequence holds nk keys; pages handed out in a shuffled order.
  const bool cache = page || g.note == "seqused_k";
  DevBuf seqused, table;
  if (cache) {
    std::vector<int32_t> used(static_cast<size_t>(g.b), static_cast<int32_t>(g.nk));
    seqused = DevBuf(used.size() * 4);
    BENCH_CUDA(cudaMemcpy(seqused.get(), used.data(), used.size() * 4, cudaMemcpyHostToDevice));
  }
  if (page) {
    std::vector<int32_t> tab(static_cast<size_t>(num_pages));
    std::iota(tab.begin(), tab.end(), 0);
    std::shuffle(tab.begin(), tab.end(), std::mt19937(5));
    table = DevBuf(tab.size() * 4);
    BENCH_CUDA(cudaMemcpy(table.get(), tab.data(), tab.size() * 4, cudaMemcpyHostToDevice));
  }

  DevBuf cu_seqlens;
  if (ragged) {
    std::vector<int32_t> cu(1, 0);
    for (int64_t l : ragged_len) cu.push_back(cu.back() + static_cast<int32_t>(l));
    cu_seqlens = DevBuf(cu.size() * 4);
    BENCH_CUDA(cudaMemcpy(cu_seqlens.get(), cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  }

  BwdParams p;
  p.batch = g.b, p.seqlen_q = g.nq, p.seqlen_k = g.nk, p.heads_q = g.hq, p.heads_kv = g.hkv, p.head_dim = g.d;
  p.dtype = dt;
  p.causal = g.causal;
  p.device = Device::kCUDA;
  set_contiguous_strides(p);
  if (cache) p.seqused_k = static_cast<const int32_t*>(seqused.get());
  if (ragged) {
    p.cu_seqlens_q = p.cu_seqlens_k = static_cast<const int32_t*>(cu_seqlens.get());
    p.total_q = p.total_k = total;
  }
  if (decode) p.num_splits = s.o.splits;  // --splits: force the split count (sweeps of the heuristic)
  if (page) {
    p.k_batch_stride = p.v_batch_stride = page * g.hkv * g.d;  // one page
    p.block_table = static_cast<const int32_t*>(table.get());
    p.block_table_batch_stride = pages_per_seq;
    p.page_size = page;
    p.num_pages = num_pages;
  }
  auto bind = [&](int i) {
    Set& b = bufs[i];
    p.q = b.q.get(), p.k = b.k.get(), p.v = b.v.get(), p.o = b.o.get();
    p.lse = static_cast<float*>(b.lse.get());
    p.dout = b.dout.get(), p.dq = b.dq.get(), p.dk = b.dk.get(), p.dv = b.dv.get();
  };
  if (bwd) {  // the backward needs O and the LSE of a forward with the same options
    for (int i = 0; i < sets; ++i) {
      bind(i);
      p.kernel = Kernel::kAuto;
      const Status st = forward(static_cast<const FwdParams&>(p));
      if (!st.ok()) {
        for (Row* r : group) r->error = "forward (auto) for O/LSE failed: " + status_text(st);
        return;
      }
    }
    BENCH_CUDA(cudaDeviceSynchronize());
  }
  for (Row* r : group) {
    const bool variant = r->name.rfind("hopper:", 0) == 0;  // FLASHATTN_BENCH_HOPPER_VARIANTS row
    p.kernel = r->name == "naive" ? Kernel::kNaive
               : r->name == "fa1"  ? Kernel::kFA1
               : r->name == "fa2"  ? Kernel::kFA2
               : r->name == "hopper" || r->name == "hopper_det" || variant ? Kernel::kHopper
                                                                           : Kernel::kAuto;
    p.deterministic = r->name == "hopper_det";
    // A variant row sets the kernel's variable (and, backward, the experiments gate)
    // for its own measurement and restores them after.
    std::vector<std::pair<const char*, std::string>> env;
    if (variant) {
      env.emplace_back(bwd ? "FLASHATTN_HOPPER_BWD_VARIANT" : "FLASHATTN_HOPPER_VARIANT", r->name.substr(7));
      if (bwd) env.emplace_back("FLASHATTN_HOPPER_BWD_EXPERIMENTS", "1");
    }
    std::vector<std::pair<bool, std::string>> saved;
    for (const auto& [name, value] : env) {
      const char* before = std::getenv(name);
      saved.emplace_back(before != nullptr, before ? before : "");
      setenv(name, value.c_str(), 1);
    }
    s.measure(*r, sets, [&](int i) {
      bind(i);
      return bwd ? backward(p) : forward(static_cast<const FwdParams&>(p));
    });
    for (size_t e = 0; e < env.size(); ++e) {
      if (saved[e].first) setenv(env[e].first, saved[e].second.c_str(), 1);
      else unsetenv(env[e].first);
    }
  }
}

}  // namespace

int run_gpu(const Options& o) {
  const int count = cuda_device_count();
  if (count == 0) {
    std::printf("--gpu: no CUDA GPU found (cudaGetDeviceCount = 0)\n");
    return 1;
  }
  Sweep s;
  s.o = o;
  s.dt = parse_dtype(o.dtype.empty() ? "bf16" : o.dtype);
  s.dts = short_dtype(s.dt);
  s.reps = std::max(o.reps > 0 ? o.reps : 20, 1);
  std::string title;
  try {
    int dev = 0;
    BENCH_CUDA(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    BENCH_CUDA(cudaGetDeviceProperties(&prop, dev));
    int driver = 0, runtime = 0;
    BENCH_CUDA(cudaDriverGetVersion(&driver));
    BENCH_CUDA(cudaRuntimeGetVersion(&runtime));
    std::printf("GPU: %s (sm_%d%d, %d SMs, %.0f GiB), driver %d, runtime %d\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, driver, runtime);
    title = std::string(prop.name) + ", " + s.dts;
  } catch (const CudaError& e) {
    std::printf("--gpu: %s\n", e.what());
    return 1;
  }

  if (o.softmax) {
    build_softmax_sweep(s);
  } else if (o.varlen) {
    build_varlen_sweep(s);
  } else if (o.decode) {
    build_decode_sweep(s);
  } else {
    build_attention_sweep(s, o.bwd);
    if (!o.bwd && !o.n && !o.d) build_softmax_sweep(s);
  }

  // Our rungs, group by group.
  RandomPool pool;
  std::vector<std::vector<Row*>> groups;
  for (Row& r : s.rows) {
    if (r.is_torch) continue;
    if (groups.empty() || groups.back().front()->group != r.group) groups.emplace_back();
    groups.back().push_back(&r);
  }
  for (auto& g : groups) s.total += static_cast<int>(g.size());
  Watchdog watchdog(&s.rows, o.row_timeout, title);
  s.watchdog = &watchdog;
  const double t_start = now_s();
  bool broken = false;
  int counted = 0;
  for (auto& g : groups) {
    s.done = counted;  // rows a group leaves unmeasured still count as done
    counted += static_cast<int>(g.size());
    if (broken) {
      for (Row* r : g) r->error = "skipped: the CUDA context was broken by an earlier error";
      continue;
    }
    if (o.max_seconds > 0 && now_s() - t_start > o.max_seconds) {
      for (Row* r : g) r->error = "skipped: over the time budget (--max-seconds " + std::to_string(o.max_seconds) + ")";
      continue;
    }
    try {
      watchdog.begin(g.front());  // allocation and upload of the group's inputs
      run_group(s, g, pool);
      watchdog.end();
    } catch (const CudaError& e) {
      watchdog.end();
      // time_gpu names the row that failed; a failure outside it (allocation,
      // upload) goes to the first row without a result. An error that sticks
      // (illegal address, ...) poisons the context for the rest of the run.
      bool named = false;
      for (Row* r : g) named |= r->error.find(e.what()) != std::string::npos;
      for (Row* r : g)
        if (!named && r->ms < 0 && r->error.empty()) {
          r->error = std::string("CUDA error: ") + e.what();
          break;
        }
      for (Row* r : g)
        if (r->ms < 0 && r->error.empty()) r->error = "skipped after a CUDA error in this group";
      const cudaError_t sticky = cudaDeviceSynchronize();
      cudaGetLastError();
      if (sticky != cudaSuccess) broken = true;
    }
  }
  progress_done();

  if (o.torch && !broken) {
    std::fprintf(stderr, "running bench/torch_sdpa.py (%zu cases)...\n", s.torch_req.size());
    std::string req = "{\"cases\": [";
    for (size_t i = 0; i < s.torch_req.size(); ++i) req += (i ? ",\n" : "\n") + s.torch_req[i];
    req += "]}\n";
    std::string why;
    if (!run_torch(req, s.rows, &why)) {
      std::printf("%s\n", why.c_str());
      for (Row& r : s.rows)
        if (r.is_torch) r.error = "no torch";
    }
  }

  std::printf("ms = median of >= %d CUDA-event timed reps after warm-up; TFLOPS: fwd 4*B*H*Nq*Nk*D (/2 causal), "
              "bwd 2.5x;\nGB/s: decode = K+V bytes read / time, softmax = read+write bytes / time; "
              "vs cudnn = cudnn time / this time\n", s.reps);
  print_table(s.rows, "TFLOPS", 1e12, "cudnn", "vs cudnn");
  print_summary(s.rows, "TFLOPS", 1e12, "cudnn", title);
  return broken ? 1 : 0;
}

#endif  // FLASHATTN_WITH_CUDA

}  // namespace bench
}  // namespace flashattn
