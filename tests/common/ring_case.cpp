#include "ring_case.h"

#include <thread>

#include "flashattn/ring.h"
#if FLASHATTN_WITH_CUDA
#include <cuda_runtime.h>
#endif
#if FLASHATTN_WITH_NCCL
#include <nccl.h>
#endif

namespace flashattn {
namespace testing {
std::string case_name(const RingCase& c) {
  return "w" + std::to_string(c.world) + (c.zigzag ? "_zigzag" : "_plain") + (c.causal ? "_causal" : "_full") +
         "_h" + std::to_string(c.heads_q) + "x" + std::to_string(c.heads_kv) + "_" + dtype_name(c.dtype);
}

// Global row of local row i of rank r.
namespace {

int64_t global_row(int64_t i, int r, int world, int64_t local_len, bool zigzag) {
  if (!zigzag) return r * local_len + i;
  const int64_t c = local_len / 2;
  return i < c ? r * c + i : (2 * world - 1 - r) * c + (i - c);
}

// Copies rows of a [B, N, H, D] tensor into / out of a rank's [B, L, H, D] shard.
void gather_rows(const HostTensor& full, HostTensor& shard, int64_t B, int64_t N, int64_t L, int64_t H, int64_t D,
                 int r, int world, bool zigzag) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < L; ++i)
      for (int64_t e = 0; e < H * D; ++e)
        shard.set((b * L + i) * H * D + e, full.get((b * N + global_row(i, r, world, L, zigzag)) * H * D + e));
}

#if FLASHATTN_WITH_CUDA
// Device copies of one rank's tensors; the params are repointed at them.
struct DeviceShard {
  std::vector<void*> allocations;
  ~DeviceShard() {
    for (void* p : allocations) cudaFree(p);
  }
  void* mirror(const void* host, size_t bytes) {
    void* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, bytes), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    allocations.push_back(d);
    return d;
  }
};
void download(const void* dev, void* host, size_t bytes) {
  EXPECT_EQ(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
}
#endif

}  // namespace

void check_ring_case(const RingCase& rc, Device device, int nccl_devices) {
  const int64_t L = 2 * 9;  // local length (even, for zig-zag); odd chunk length 9
  Shape s;
  s.batch = 2;
  s.seqlen_q = s.seqlen_k = rc.world * L;
  s.heads_q = rc.heads_q;
  s.heads_kv = rc.heads_kv;
  s.head_dim = 32;
  s.causal = rc.causal;
  s.dtype = rc.dtype;
  Problem global(s, 4242 + rc.world);
  const int64_t B = s.batch, N = s.seqlen_q, Hq = s.heads_q, Hkv = s.heads_kv, D = s.head_dim;

  // Each rank's shards (inputs) and outputs.
  struct Rank {
    HostTensor q, k, v, o, dout, dq, dk, dv;
    std::vector<float> lse;
    BwdParams p;
    Status fwd, bwd;
  };
  std::vector<Rank> ranks(rc.world);
  for (int r = 0; r < rc.world; ++r) {
    Rank& rk = ranks[r];
    rk.q = HostTensor(s.dtype, B * L * Hq * D);
    rk.o = HostTensor(s.dtype, B * L * Hq * D);
    rk.dout = HostTensor(s.dtype, B * L * Hq * D);
    rk.dq = HostTensor(s.dtype, B * L * Hq * D);
    rk.k = HostTensor(s.dtype, B * L * Hkv * D);
    rk.v = HostTensor(s.dtype, B * L * Hkv * D);
    rk.dk = HostTensor(s.dtype, B * L * Hkv * D);
    rk.dv = HostTensor(s.dtype, B * L * Hkv * D);
    rk.lse.assign(B * Hq * L, NAN);
    gather_rows(global.q, rk.q, B, N, L, Hq, D, r, rc.world, rc.zigzag);
    gather_rows(global.k, rk.k, B, N, L, Hkv, D, r, rc.world, rc.zigzag);
    gather_rows(global.v, rk.v, B, N, L, Hkv, D, r, rc.world, rc.zigzag);
    gather_rows(global.dout, rk.dout, B, N, L, Hq, D, r, rc.world, rc.zigzag);
    for (HostTensor* t : {&rk.o, &rk.dq, &rk.dk, &rk.dv}) t->fill(NAN);
    BwdParams& p = rk.p;
    p.q = rk.q.data(), p.k = rk.k.data(), p.v = rk.v.data(), p.o = rk.o.data(), p.lse = rk.lse.data();
    p.dout = rk.dout.data(), p.dq = rk.dq.data(), p.dk = rk.dk.data(), p.dv = rk.dv.data();
    p.batch = B, p.seqlen_q = p.seqlen_k = L, p.heads_q = Hq, p.heads_kv = Hkv, p.head_dim = D;
    p.dtype = s.dtype;
    p.causal = s.causal;
    p.num_threads = 1;
    set_contiguous_strides(p);
  }

#if FLASHATTN_WITH_CUDA
  std::vector<DeviceShard> shards(device == Device::kCUDA ? rc.world : 0);
  for (size_t r = 0; r < shards.size(); ++r) {
    Rank& rk = ranks[r];
    BwdParams& p = rk.p;
    if (nccl_devices > 0) cudaSetDevice(static_cast<int>(r) % nccl_devices);
    p.q = shards[r].mirror(rk.q.data(), rk.q.bytes.size());
    p.k = shards[r].mirror(rk.k.data(), rk.k.bytes.size());
    p.v = shards[r].mirror(rk.v.data(), rk.v.bytes.size());
    p.dout = shards[r].mirror(rk.dout.data(), rk.dout.bytes.size());
    p.o = shards[r].mirror(rk.o.data(), rk.o.bytes.size());
    p.dq = shards[r].mirror(rk.dq.data(), rk.dq.bytes.size());
    p.dk = shards[r].mirror(rk.dk.data(), rk.dk.bytes.size());
    p.dv = shards[r].mirror(rk.dv.data(), rk.dv.bytes.size());
    p.lse = static_cast<float*>(shards[r].mirror(rk.lse.data(), rk.lse.size() * 4));
    p.device = Device::kCUDA;
    p.device_index = nccl_devices > 0 ? static_cast<int>(r) % nccl_devices : -1;
  }
  if (nccl_devices > 0) cudaSetDevice(0);
#else
  if (device == Device::kCUDA) GTEST_SKIP() << "built without CUDA";
#endif
  std::vector<std::unique_ptr<RingTransport>> transports;
#if FLASHATTN_WITH_NCCL
  std::vector<ncclComm_t> comms(nccl_devices > 0 ? rc.world : 0);
  if (nccl_devices > 0) {
    std::vector<int> devs(rc.world);
    for (int r = 0; r < rc.world; ++r) devs[r] = r % nccl_devices;
    ASSERT_EQ(ncclCommInitAll(comms.data(), rc.world, devs.data()), ncclSuccess);
    for (int r = 0; r < rc.world; ++r) {
      cudaSetDevice(devs[r]);
      transports.push_back(make_nccl_ring(comms[r]));
    }
    cudaSetDevice(0);
  }
#endif
  if (transports.empty()) transports = make_thread_ring(rc.world);
  std::vector<std::thread> threads;
  for (int r = 0; r < rc.world; ++r)
    threads.emplace_back([&, r] {
#if FLASHATTN_WITH_CUDA
      if (nccl_devices > 0) cudaSetDevice(r % nccl_devices);
#endif
      // Twice: the second call reuses the rank's workspace (ring.h), whose accumulators
      // must start from zero again; its results are the ones checked.
      for (int call = 0; call < 2; ++call) {
        ranks[r].fwd = ring_forward(ranks[r].p, *transports[r], rc.zigzag);
        if (ranks[r].fwd.ok()) ranks[r].bwd = ring_backward(ranks[r].p, *transports[r], rc.zigzag);
      }
    });
  for (auto& t : threads) t.join();

#if FLASHATTN_WITH_NCCL
  transports.clear();
  for (ncclComm_t c : comms) ncclCommDestroy(c);
#endif
#if FLASHATTN_WITH_CUDA
  for (size_t r = 0; r < shards.size(); ++r) {
    Rank& rk = ranks[r];
    download(rk.p.o, rk.o.data(), rk.o.bytes.size());
    download(rk.p.dq, rk.dq.data(), rk.dq.bytes.size());
    download(rk.p.dk, rk.dk.data(), rk.dk.bytes.size());
    download(rk.p.dv, rk.dv.data(), rk.dv.bytes.size());
    download(rk.p.lse, rk.lse.data(), rk.lse.size() * 4);
  }
#endif
  // Assemble the shards back into global order.
  HostTensor o(s.dtype, B * N * Hq * D), dq(s.dtype, B * N * Hq * D), dk(s.dtype, B * N * Hkv * D),
      dv(s.dtype, B * N * Hkv * D);
  std::vector<float> lse(B * Hq * N, NAN);
  for (int r = 0; r < rc.world; ++r) {
    ASSERT_TRUE(ranks[r].fwd.ok()) << ranks[r].fwd.message;
    ASSERT_TRUE(ranks[r].bwd.ok()) << ranks[r].bwd.message;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < L; ++i) {
        const int64_t g = global_row(i, r, rc.world, L, rc.zigzag);
        for (int64_t e = 0; e < Hq * D; ++e) {
          o.set((b * N + g) * Hq * D + e, ranks[r].o.get((b * L + i) * Hq * D + e));
          dq.set((b * N + g) * Hq * D + e, ranks[r].dq.get((b * L + i) * Hq * D + e));
        }
        for (int64_t e = 0; e < Hkv * D; ++e) {
          dk.set((b * N + g) * Hkv * D + e, ranks[r].dk.get((b * L + i) * Hkv * D + e));
          dv.set((b * N + g) * Hkv * D + e, ranks[r].dv.get((b * L + i) * Hkv * D + e));
        }
        for (int64_t h = 0; h < Hq; ++h) lse[(b * Hq + h) * N + g] = ranks[r].lse[(b * Hq + h) * L + i];
      }
  }

  // The same tolerance rule as every kernel; the ring adds a rounding of each
  // partial result to the storage type, so 16-bit cases get 3x instead of 2x.
  const double k_rule = s.dtype == DType::kFloat32 ? 2.0 : 3.0;
  const double floor = tolerance_floor(s.dtype);
  auto ref = cpu::reference_forward_f64(global.params);
  auto low = lowprec_forward(global.params);
  EXPECT_LE(max_abs_diff(ref.out, o), k_rule * max_abs_diff(ref.out, low.out) + floor);
  EXPECT_LE(max_abs_diff_lse(ref.lse, lse), k_rule * max_abs_diff_lse(ref.lse, low.lse) + floor);
  auto gref = cpu::reference_backward_f64(global.params);
  auto glow = lowprec_backward(global.params);
  EXPECT_LE(max_abs_diff(gref.dq, dq), k_rule * max_abs_diff(gref.dq, glow.dq) + floor);
  EXPECT_LE(max_abs_diff(gref.dk, dk), k_rule * max_abs_diff(gref.dk, glow.dk) + floor);
  EXPECT_LE(max_abs_diff(gref.dv, dv), k_rule * max_abs_diff(gref.dv, glow.dv) + floor);
}

}  // namespace testing
}  // namespace flashattn
