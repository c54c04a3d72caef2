// flashattn-bench CPU mode: cpu_flash (and the float64 reference on tiny shapes)
// vs torch's CPU SDPA on the same shapes, and the three row-softmax variants
// vs torch.softmax, in GB/s.
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench.h"
#include "common/dtype.h"
#include "flashattn/flashattn.h"

namespace flashattn {
namespace bench {
namespace {

constexpr double kBudgetS = 3.0;  // per measurement: fewer reps for slow kernels

DType parse_dtype(const std::string& s) {
  if (s == "fp16") return DType::kFloat16;
  if (s == "bf16") return DType::kBFloat16;
  return DType::kFloat32;
}

std::string short_dtype(DType d) {
  return d == DType::kFloat32 ? "fp32" : d == DType::kFloat16 ? "fp16" : "bf16";
}

struct Buffer {
  std::vector<uint8_t> bytes;
  Buffer(DType dt, int64_t n, std::mt19937_64& rng) : bytes(static_cast<size_t>(n * dtype_size(dt))) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) store_from_float(bytes.data(), dt, i, dist(rng));
  }
  void* data() { return bytes.data(); }
};

std::string status_text(const Status& st) {
  if (st.code == StatusCode::kUnsupported) return "unsupported: " + st.message;
  return std::string(status_code_name(st.code)) + ": " + st.message;
}

// Times fn: one warm-up call (also the estimate), then up to `reps` calls within the budget.
void time_cpu(Row& row, int reps, const std::function<Status()>& fn) {
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  Status st = fn();
  const double first = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  if (!st.ok()) {
    row.error = status_text(st);
    return;
  }
  int n = reps;
  if (first * 1e-3 * reps > kBudgetS) n = static_cast<int>(kBudgetS / (first * 1e-3));
  if (n < 1) {  // slower than the budget: the warm-up call is the measurement
    row.ms = first;
    row.reps = 1;
    return;
  }
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    t0 = clock::now();
    st = fn();
    t.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    if (!st.ok()) {
      row.error = status_text(st);
      return;
    }
  }
  row.ms = median(t);
  row.reps = n;
}

struct AttnCase {
  int64_t b, hq, hkv, nq, nk, d;
  bool causal, bwd;
};

std::string torch_attn_json(int id, const Row& r, bool bwd, int reps) {
  std::ostringstream js;
  js << "{\"id\": " << id << ", \"op\": \"attn\", \"device\": \"cpu\", \"backend\": \"default\", \"dtype\": "
     << json_str(r.dtype) << ", \"b\": " << r.b << ", \"hq\": " << r.hq << ", \"hkv\": " << r.hkv << ", \"nq\": " << r.nq
     << ", \"nk\": " << r.nk << ", \"d\": " << r.d << ", \"causal\": " << (r.causal ? "true" : "false")
     << ", \"bwd\": " << (bwd ? "true" : "false") << ", \"reps\": " << reps << "}";
  return js.str();
}

}  // namespace

int run_cpu(const Options& o) {
  const DType dt = parse_dtype(o.dtype.empty() ? "fp32" : o.dtype);
  const std::string dts = short_dtype(dt);
  const int reps = o.reps > 0 ? o.reps : 5;
  const bool shape_given = o.n || o.d || o.b || o.h;

  // --- the sweep ------------------------------------------------------------
  std::vector<AttnCase> cases;
  const int64_t b = o.b ? o.b : 1, h = o.h ? o.h : (o.quick ? 4 : 8), hkv = o.hkv ? o.hkv : h;
  std::vector<bool> causals = o.causal < 0 ? std::vector<bool>{false, true} : std::vector<bool>{o.causal == 1};
  if (!o.bwd || !shape_given) {  // forward rows unless only --bwd with a shape was asked for
    const int64_t n = o.n ? o.n : (o.quick ? 256 : 2048);
    std::vector<int64_t> ds = o.d ? std::vector<int64_t>{o.d} : (o.quick ? std::vector<int64_t>{64}
                                                                          : std::vector<int64_t>{64, 128});
    if (!o.bwd)
      for (int64_t d : ds)
        for (bool c : causals) cases.push_back({b, h, hkv, n, o.nk ? o.nk : n, d, c, false});
  }
  {
    const int64_t n = o.n ? o.n : (o.quick ? 128 : 1024);
    const int64_t d = o.d ? o.d : 64;
    for (bool c : causals)
      if (o.bwd || !o.quick || c) cases.push_back({b, h, hkv, n, o.nk ? o.nk : n, d, c, true});
  }

  std::vector<Row> rows;
  std::vector<std::string> torch_req;
  int group = 0;
  for (const AttnCase& c : cases) {
    Row base;
    base.group = group++;
    base.section = c.bwd ? "bwd" : "fwd";
    base.dtype = dts;
    base.b = c.b, base.hq = c.hq, base.hkv = c.hkv, base.nq = c.nq, base.nk = c.nk, base.d = c.d;
    base.causal = c.causal;
    base.work = attention_flops(c.b, c.hq, c.nq, c.nk, c.d, c.causal, c.bwd);
    Row flash = base;
    flash.name = "cpu_flash";
    rows.push_back(flash);
    if (base.work / (c.bwd ? 2.5 : 1.0) <= 3e8) {  // the float64 oracle only where it is quick
      Row ref = base;
      ref.name = "reference";
      rows.push_back(ref);
    }
    Row t = base;
    t.name = "torch_sdpa";
    t.is_torch = true;
    t.error = "torch not run";
    rows.push_back(t);
    torch_req.push_back(torch_attn_json(static_cast<int>(rows.size()) - 1, t, c.bwd, reps));
  }
  // Softmax rows: read + write bytes.
  if (!o.bwd) {
    const int64_t sm_rows = o.quick ? 512 : 4096, sm_cols = o.quick ? 1024 : 4096;
    Row base;
    base.group = group++;
    base.section = "softmax";
    base.dtype = dts;
    base.b = 1, base.hq = 1, base.hkv = 1, base.nq = sm_rows, base.nk = sm_cols, base.d = 0;
    base.metric = Metric::kBandwidth;
    base.work = 2.0 * sm_rows * sm_cols * dtype_size(dt);
    for (SoftmaxVariant v : {SoftmaxVariant::kNaive, SoftmaxVariant::kSafe, SoftmaxVariant::kOnline}) {
      Row r = base;
      r.name = std::string("softmax_") + softmax_variant_name(v);
      r.note = softmax_variant_name(v);
      rows.push_back(r);
    }
    Row t = base;
    t.name = "torch";
    t.is_torch = true;
    t.error = "torch not run";
    rows.push_back(t);
    std::ostringstream js;
    js << "{\"id\": " << rows.size() - 1 << ", \"op\": \"softmax\", \"device\": \"cpu\", \"backend\": \"softmax\", "
       << "\"dtype\": " << json_str(dts) << ", \"rows\": " << sm_rows << ", \"cols\": " << sm_cols
       << ", \"reps\": " << reps << "}";
    torch_req.push_back(js.str());
  }

  // --- our kernels ------------------------------------------------------------
  int done = 0, total = 0;
  for (const Row& r : rows) total += !r.is_torch;
  std::mt19937_64 rng(2024);
  for (Row& r : rows) {
    if (r.is_torch) continue;
    progress(++done, total, r.section + " " + r.name + " " + r.dtype + " N=" + std::to_string(r.nq) +
                                " D=" + std::to_string(r.d) + (r.causal ? " causal" : ""));
    if (r.section == "softmax") {
      Buffer x(dt, r.nq * r.nk, rng), y(dt, r.nq * r.nk, rng);
      SoftmaxParams p;
      p.x = x.data();
      p.y = y.data();
      p.rows = r.nq;
      p.cols = p.x_row_stride = p.y_row_stride = r.nk;
      p.dtype = dt;
      p.variant = r.note == "naive" ? SoftmaxVariant::kNaive
                  : r.note == "safe" ? SoftmaxVariant::kSafe
                                     : SoftmaxVariant::kOnline;
      p.num_threads = o.threads;
      time_cpu(r, reps, [&] { return softmax(p); });
      continue;
    }
    Buffer q(dt, r.b * r.nq * r.hq * r.d, rng), k(dt, r.b * r.nk * r.hkv * r.d, rng),
        v(dt, r.b * r.nk * r.hkv * r.d, rng), out(dt, r.b * r.nq * r.hq * r.d, rng);
    std::vector<float> lse(static_cast<size_t>(r.b * r.hq * r.nq));
    BwdParams p;
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = out.data(), p.lse = lse.data();
    p.batch = r.b, p.seqlen_q = r.nq, p.seqlen_k = r.nk, p.heads_q = r.hq, p.heads_kv = r.hkv, p.head_dim = r.d;
    p.dtype = dt;
    p.causal = r.causal;
    p.kernel = r.name == "reference" ? Kernel::kReference : Kernel::kCpuFlash;
    p.num_threads = o.threads;
    set_contiguous_strides(p);
    if (r.section == "fwd") {
      time_cpu(r, reps, [&] { return forward(static_cast<const FwdParams&>(p)); });
      continue;
    }
    Buffer dout(dt, r.b * r.nq * r.hq * r.d, rng), dq(dt, r.b * r.nq * r.hq * r.d, rng),
        dk(dt, r.b * r.nk * r.hkv * r.d, rng), dvb(dt, r.b * r.nk * r.hkv * r.d, rng);
    p.dout = dout.data(), p.dq = dq.data(), p.dk = dk.data(), p.dv = dvb.data();
    const Status st = forward(static_cast<const FwdParams&>(p));  // the LSE the backward needs
    if (!st.ok()) {
      r.error = "forward for the LSE failed: " + status_text(st);
      continue;
    }
    time_cpu(r, reps, [&] { return backward(p); });
  }
  progress_done();

  // --- torch, same shapes ---------------------------------------------------------
  if (o.torch) {
    std::fprintf(stderr, "running bench/torch_sdpa.py (torch CPU SDPA, %zu cases)...\n", torch_req.size());
    std::string req = "{\"cases\": [";
    for (size_t i = 0; i < torch_req.size(); ++i) req += (i ? ",\n" : "\n") + torch_req[i];
    req += "]}\n";
    std::string why;
    if (!run_torch(req, rows, &why)) {
      std::printf("%s\n", why.c_str());
      for (Row& r : rows)
        if (r.is_torch) r.error = "no torch";
    }
  }

  std::printf("CPU mode, %s; ms = median; GFLOPS: fwd 4*B*H*Nq*Nk*D (/2 causal), bwd 2.5x; softmax GB/s = "
              "read+write bytes\n", dts.c_str());
  print_table(rows, "GFLOPS", 1e9, "torch_sdpa", "speedup");
  print_summary(rows, "GFLOPS", 1e9, "torch_sdpa", "CPU (softmax rows: vs torch.softmax)");
  return 0;
}

}  // namespace bench
}  // namespace flashattn
