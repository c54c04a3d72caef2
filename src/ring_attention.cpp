// Ring attention: the orchestration, shared by the CPU simulation and the GPU
// (docs/08-ring-attention.md). Each step computes this rank's queries against
// the K/V block in hand with the ordinary flashattn kernels (which return LSE),
// merges the partial result with equation (4), and passes the block on.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/ring_ops.h"
#include "flashattn/flashattn.h"
#include "flashattn/ring.h"
#if FLASHATTN_WITH_CUDA
#include "cuda/ring/ring_kernels.h"
#endif

namespace flashattn {

// The rank's scratch (ring.h): slot i is one buffer, on `device` / `device_index`.
struct RingTransport::Workspace {
  struct Slot {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  Device device = Device::kCPU;
  int device_index = -1;
  std::vector<Slot> slots;

  ~Workspace() { release(); }
  void free_buffer(void* ptr) const {
#if FLASHATTN_WITH_CUDA
    // cudaFree waits for the device, so no queued work still reads the buffer.
    if (device == Device::kCUDA) return cuda::ring_free_on(device_index, ptr);
#endif
    ::operator delete(ptr);
  }
  void release() {
    for (Slot& s : slots)
      if (s.ptr) free_buffer(s.ptr);
    slots.clear();
  }
};

RingTransport::RingTransport() = default;
RingTransport::~RingTransport() = default;
RingTransport::Workspace& RingTransport::workspace() {
  if (!workspace_) workspace_ = std::make_unique<Workspace>();
  return *workspace_;
}

namespace {

#define RING_RETURN_IF_ERROR(expr) \
  do {                             \
    Status _st = (expr);           \
    if (!_st.ok()) return _st;     \
  } while (0)

// The primitive data movements of the ring, on the CPU or on the current GPU.
class Ops {
 public:
  Ops(Device device, void* stream) : device_(device), stream_(stream) {}
  Device device() const { return device_; }
  int device_index() const {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_current_device();
#endif
    return -1;
  }

  Status alloc(void** ptr, size_t bytes) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_alloc(ptr, bytes);
#endif
    *ptr = ::operator new(bytes);
    return Status::Ok();
  }
  void free(void* ptr) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_free(ptr);
#endif
    ::operator delete(ptr);
  }
  Status copy(void* dst, const void* src, size_t bytes) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_copy(dst, src, bytes, stream_);
#endif
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t height) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_copy_2d(dst, dst_pitch, src, src_pitch, width, height, stream_);
#endif
    for (size_t r = 0; r < height; ++r)
      std::memcpy(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, width);
    return Status::Ok();
  }
  Status fill(float* ptr, float value, size_t count) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_fill(ptr, value, count, stream_);
#endif
    for (size_t i = 0; i < count; ++i) ptr[i] = value;
    return Status::Ok();
  }
  Status merge(float* acc_o, float* acc_lse, const void* part, const float* part_lse, DType dtype,
               const ring::ChunkShape& s) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_merge(acc_o, acc_lse, part, part_lse, dtype, s, stream_);
#endif
    const int64_t rows = s.batch * s.chunk_len * s.heads;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t e0 = r * s.dim, lse_full = s.full_lse_index(e0);
      const float old_lse = acc_lse[lse_full], p_lse = part_lse[s.part_lse_index(e0)];
      float new_lse = old_lse;
      for (int64_t d = 0; d < s.dim; ++d) {
        const int64_t full = s.full_index(e0 + d);
        acc_o[full] = ring::merge_output(acc_o[full], old_lse, load_as_float(part, dtype, e0 + d), p_lse, &new_lse);
      }
      acc_lse[lse_full] = new_lse;
    }
    return Status::Ok();
  }
  Status accumulate(float* acc, const void* part, DType dtype, const ring::ChunkShape& s) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_accumulate(acc, part, dtype, s, stream_);
#endif
    for (int64_t e = 0; e < s.part_elems(); ++e) acc[s.full_index(e)] += load_as_float(part, dtype, e);
    return Status::Ok();
  }
  Status convert(void* dst, const float* src, DType dtype, size_t count) {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_convert(dst, src, dtype, count, stream_);
#endif
    for (size_t i = 0; i < count; ++i) store_from_float(dst, dtype, static_cast<int64_t>(i), src[i]);
    return Status::Ok();
  }
  Status sync() {
#if FLASHATTN_WITH_CUDA
    if (device_ == Device::kCUDA) return cuda::ring_sync(stream_);
#endif
    return Status::Ok();
  }

 private:
  Device device_;
  void* stream_;
};

// Scratch buffers of one call, taken from the rank's workspace (ring.h): buffer i is
// slot i, at least bytes[i] long. Slots grow on demand and stay allocated between
// calls; a call on another device (or the CPU) releases them first.
Status take_scratch(RingTransport::Workspace& ws, Ops& ops, std::initializer_list<size_t> bytes,
                    std::vector<char*>* out) {
  const int index = ops.device_index();
  if (ws.device != ops.device() || ws.device_index != index) {
    ws.release();
    ws.device = ops.device();
    ws.device_index = index;
  }
  if (ws.slots.size() < bytes.size()) ws.slots.resize(bytes.size());
  out->clear();
  size_t i = 0;
  for (size_t want : bytes) {
    RingTransport::Workspace::Slot& slot = ws.slots[i++];
    want = std::max<size_t>(want, 1);
    if (slot.bytes < want) {
      if (slot.ptr) ws.free_buffer(slot.ptr);
      slot = {};
      void* ptr = nullptr;
      RING_RETURN_IF_ERROR(ops.alloc(&ptr, want));
      slot = {ptr, want};
    }
    out->push_back(static_cast<char*>(slot.ptr));
  }
  return Status::Ok();
}

// Who holds which part of the global sequence (zig-zag: chunks r and 2W-1-r).
struct Sharding {
  int world = 1;
  int rank = 0;
  bool zigzag = false;
  int n_chunks = 1;        // chunks per rank
  int64_t chunk_len = 0;   // rows per chunk
  int64_t global_chunk(int owner, int k) const { return zigzag ? (k == 0 ? owner : 2 * world - 1 - owner) : owner; }
};

enum class Pair { kSkip, kFull, kDiagonal };
// Equal-sized chunks: a causal pair is fully visible below the diagonal, causal on it, empty above.
Pair pair_kind(bool causal, int64_t q_chunk, int64_t kv_chunk) {
  if (!causal || kv_chunk < q_chunk) return Pair::kFull;
  return kv_chunk == q_chunk ? Pair::kDiagonal : Pair::kSkip;
}

bool is_contiguous(int64_t L, int64_t H, int64_t D, int64_t bs, int64_t rs, int64_t hs) {
  return hs == D && rs == H * D && bs == L * H * D;
}

Status check_ring(const FwdParams& p, const RingTransport& t, bool zigzag, Sharding* sh) {
  RING_RETURN_IF_ERROR(validate(p));
  if (p.seqlen_q != p.seqlen_k)
    return Status::Invalid("ring attention shards one sequence: the local seqlen_q and seqlen_k must be equal (got " +
                           std::to_string(p.seqlen_q) + " and " + std::to_string(p.seqlen_k) + ")");
  if (p.window_left >= 0 || (p.window_right >= 0 && !p.causal))
    return Status::Unsupported("ring attention supports causal or full attention; sliding windows are not supported");
  if (p.lse == nullptr) return Status::Invalid("ring attention needs lse: partial results are merged through it");
  const int64_t dv = p.head_dim_v ? p.head_dim_v : p.head_dim;
  if (!is_contiguous(p.seqlen_q, p.heads_q, p.head_dim, p.q_batch_stride, p.q_row_stride, p.q_head_stride) ||
      !is_contiguous(p.seqlen_k, p.heads_kv, p.head_dim, p.k_batch_stride, p.k_row_stride, p.k_head_stride) ||
      !is_contiguous(p.seqlen_k, p.heads_kv, dv, p.v_batch_stride, p.v_row_stride, p.v_head_stride) ||
      !is_contiguous(p.seqlen_q, p.heads_q, dv, p.o_batch_stride, p.o_row_stride, p.o_head_stride))
    return Status::Unsupported("ring attention needs contiguous [batch, seqlen, heads, dim] shards of q, k, v, o");
  sh->world = t.world_size();
  sh->rank = t.rank();
  sh->zigzag = zigzag;
  sh->n_chunks = zigzag ? 2 : 1;
  if (p.seqlen_q % sh->n_chunks != 0)
    return Status::Invalid("zig-zag sharding needs an even local length (two chunks per rank); got " +
                           std::to_string(p.seqlen_q));
  sh->chunk_len = p.seqlen_q / sh->n_chunks;
  return Status::Ok();
}

const char* offset(const void* base, int64_t elems, DType dt) {
  return static_cast<const char*>(base) + elems * dtype_size(dt);
}

// Points `sub` (a copy of the rank's params) at one (query chunk qk, key chunk kk)
// pair: chunk qk of the local queries against chunk kk of the K/V block in hand.
void point_at_pair(FwdParams& sub, const Sharding& sh, Pair kind, int qk, int kk, const char* kv_block,
                   int64_t kv_elems) {
  const FwdParams local = sub;
  const int64_t c = sh.chunk_len, L = local.seqlen_q, D = local.head_dim, es = dtype_size(local.dtype);
  sub.seqlen_q = sub.seqlen_k = c;
  sub.causal = kind == Pair::kDiagonal;
  sub.window_right = -1;
  sub.q = offset(local.q, qk * c * local.heads_q * D, local.dtype);
  sub.k = kv_block + kk * c * local.heads_kv * D * es;
  sub.v = kv_block + (kv_elems + kk * c * local.heads_kv * D) * es;
  sub.k_batch_stride = sub.v_batch_stride = L * local.heads_kv * D;  // chunks are views into the [B, L, Hkv, D] block
}

}  // namespace

static Status ring_forward_steps(const FwdParams& local, RingTransport& transport, bool zigzag) {
  Sharding sh;
  RING_RETURN_IF_ERROR(check_ring(local, transport, zigzag, &sh));
  Ops ops(local.device, local.stream);
  const DType dt = local.dtype;
  const int64_t B = local.batch, L = local.seqlen_q, Hq = local.heads_q, Hkv = local.heads_kv, D = local.head_dim;
  const int64_t c = sh.chunk_len, es = dtype_size(dt);
  const size_t kv_elems = static_cast<size_t>(B * L * Hkv * D);

  const size_t q_elems = static_cast<size_t>(B * L * Hq * D), kv_bytes = 2 * kv_elems * es;
  const size_t part_elems = static_cast<size_t>(B * c * Hq * D), lse_rows = static_cast<size_t>(B * Hq * L);
  std::vector<char*> buf;  // acc_o, acc_lse, kv0, kv1 (only when the block moves), part_o, part_lse
  RING_RETURN_IF_ERROR(take_scratch(transport.workspace(), ops,
                                    {q_elems * 4, lse_rows * 4, kv_bytes, sh.world > 1 ? kv_bytes : 1,
                                     part_elems * es, static_cast<size_t>(B * Hq * c) * 4},
                                    &buf));
  float* acc_o = reinterpret_cast<float*>(buf[0]);
  float* acc_lse = reinterpret_cast<float*>(buf[1]);
  void* part_o = buf[4];
  float* part_lse = reinterpret_cast<float*>(buf[5]);
  RING_RETURN_IF_ERROR(ops.fill(acc_o, 0.0f, q_elems));
  RING_RETURN_IF_ERROR(ops.fill(acc_lse, -INFINITY, lse_rows));
  // The block in flight: K then V of one shard, contiguous.
  RING_RETURN_IF_ERROR(ops.copy(buf[2], local.k, kv_elems * es));
  RING_RETURN_IF_ERROR(ops.copy(buf[2] + kv_elems * es, local.v, kv_elems * es));
  char* kv[2] = {buf[2], buf[3]};

  int cur = 0;
  for (int step = 0; step < sh.world; ++step) {
    const int src = (sh.rank - step + sh.world) % sh.world;  // owner of the block in hand
    const bool pass_on = step + 1 < sh.world;
    // Send the block on while computing with it (the next one lands in the other buffer).
    if (pass_on) RING_RETURN_IF_ERROR(transport.start(kv[cur], kv[1 - cur], 2 * kv_elems * es, local.device, local.stream));
    for (int qk = 0; qk < sh.n_chunks; ++qk)
      for (int kk = 0; kk < sh.n_chunks; ++kk) {
        const Pair kind = pair_kind(local.causal, sh.global_chunk(sh.rank, qk), sh.global_chunk(src, kk));
        if (kind == Pair::kSkip) continue;
        FwdParams sub = local;
        point_at_pair(sub, sh, kind, qk, kk, kv[cur], kv_elems);
        sub.o = part_o;
        sub.o_batch_stride = c * Hq * D;
        sub.lse = part_lse;
        RING_RETURN_IF_ERROR(forward(sub));
        RING_RETURN_IF_ERROR(ops.merge(acc_o, acc_lse, part_o, part_lse, dt, ring::ChunkShape{B, L, c, qk * c, Hq, D}));
      }
    if (pass_on) {
      RING_RETURN_IF_ERROR(transport.wait(local.stream));
      cur = 1 - cur;
    }
  }
  RING_RETURN_IF_ERROR(ops.convert(local.o, acc_o, dt, q_elems));
  RING_RETURN_IF_ERROR(ops.copy(local.lse, acc_lse, lse_rows * 4));
  return ops.sync();
}

static Status ring_backward_steps(const BwdParams& local, RingTransport& transport, bool zigzag) {
  Sharding sh;
  RING_RETURN_IF_ERROR(check_ring(local, transport, zigzag, &sh));
  RING_RETURN_IF_ERROR(validate(local));
  const int64_t dv = local.head_dim_v ? local.head_dim_v : local.head_dim;
  if (!is_contiguous(local.seqlen_q, local.heads_q, dv, local.dout_batch_stride, local.dout_row_stride,
                     local.dout_head_stride) ||
      !is_contiguous(local.seqlen_q, local.heads_q, local.head_dim, local.dq_batch_stride, local.dq_row_stride,
                     local.dq_head_stride) ||
      !is_contiguous(local.seqlen_k, local.heads_kv, local.head_dim, local.dk_batch_stride, local.dk_row_stride,
                     local.dk_head_stride) ||
      !is_contiguous(local.seqlen_k, local.heads_kv, dv, local.dv_batch_stride, local.dv_row_stride,
                     local.dv_head_stride))
    return Status::Unsupported("ring attention needs contiguous shards of dout, dq, dk, dv");
  Ops ops(local.device, local.stream);
  const DType dt = local.dtype;
  const int64_t B = local.batch, L = local.seqlen_q, Hq = local.heads_q, Hkv = local.heads_kv, D = local.head_dim;
  const int64_t c = sh.chunk_len, es = dtype_size(dt);
  const size_t kv_elems = static_cast<size_t>(B * L * Hkv * D);

  // K/V travel as before; their fp32 gradient accumulators (dK then dV) travel with them.
  // Slots in the forward's order where the roles match (one workspace serves both).
  const size_t q_elems = static_cast<size_t>(B * L * Hq * D), kv_bytes = 2 * kv_elems * es;
  const size_t part_kv_bytes = static_cast<size_t>(B * c * Hkv * D * es);
  std::vector<char*> buf;  // dq_acc, part_lse, kv0, kv1, part_dq, part_dk, dkv0, dkv1, part_dv
  RING_RETURN_IF_ERROR(take_scratch(transport.workspace(), ops,
                                    {q_elems * 4, static_cast<size_t>(B * Hq * c) * 4, kv_bytes,
                                     sh.world > 1 ? kv_bytes : 1, static_cast<size_t>(B * c * Hq * D * es),
                                     part_kv_bytes, 2 * kv_elems * 4, 2 * kv_elems * 4, part_kv_bytes},
                                    &buf));
  float* dq_acc = reinterpret_cast<float*>(buf[0]);
  float* part_lse = reinterpret_cast<float*>(buf[1]);
  void *part_dq = buf[4], *part_dk = buf[5], *part_dv = buf[8];
  RING_RETURN_IF_ERROR(ops.fill(dq_acc, 0.0f, q_elems));
  RING_RETURN_IF_ERROR(ops.fill(reinterpret_cast<float*>(buf[6]), 0.0f, 2 * kv_elems));
  RING_RETURN_IF_ERROR(ops.copy(buf[2], local.k, kv_elems * es));
  RING_RETURN_IF_ERROR(ops.copy(buf[2] + kv_elems * es, local.v, kv_elems * es));
  char* kv[2] = {buf[2], buf[3]};
  float* dkv[2] = {reinterpret_cast<float*>(buf[6]), reinterpret_cast<float*>(buf[7])};

  int cur = 0;
  for (int step = 0; step < sh.world; ++step) {
    const int src = (sh.rank - step + sh.world) % sh.world;
    const bool pass_on = step + 1 < sh.world;
    if (pass_on) RING_RETURN_IF_ERROR(transport.start(kv[cur], kv[1 - cur], 2 * kv_elems * es, local.device, local.stream));
    for (int qk = 0; qk < sh.n_chunks; ++qk)
      for (int kk = 0; kk < sh.n_chunks; ++kk) {
        const Pair kind = pair_kind(local.causal, sh.global_chunk(sh.rank, qk), sh.global_chunk(src, kk));
        if (kind == Pair::kSkip) continue;
        BwdParams sub = local;
        point_at_pair(sub, sh, kind, qk, kk, kv[cur], kv_elems);
        const int64_t q_off = qk * c * Hq * D;
        sub.o = const_cast<char*>(offset(local.o, q_off, dt));  // the merged (final) O: D = rowsum(dO o O) is global
        sub.dout = offset(local.dout, q_off, dt);
        // The final LSE rows of this query chunk, made contiguous [B, Hq, c].
        RING_RETURN_IF_ERROR(ops.copy_2d(part_lse, c * 4, local.lse + qk * c, L * 4, c * 4, B * Hq));
        sub.lse = part_lse;
        sub.dq = part_dq;
        sub.dq_batch_stride = c * Hq * D;
        sub.dk = part_dk;
        sub.dv = part_dv;
        sub.dk_batch_stride = sub.dv_batch_stride = c * Hkv * D;
        RING_RETURN_IF_ERROR(backward(sub));
        RING_RETURN_IF_ERROR(ops.accumulate(dq_acc, part_dq, dt, ring::ChunkShape{B, L, c, qk * c, Hq, D}));
        const ring::ChunkShape kv_shape{B, L, c, kk * c, Hkv, D};
        RING_RETURN_IF_ERROR(ops.accumulate(dkv[cur], part_dk, dt, kv_shape));
        RING_RETURN_IF_ERROR(ops.accumulate(dkv[cur] + kv_elems, part_dv, dt, kv_shape));
      }
    if (pass_on) RING_RETURN_IF_ERROR(transport.wait(local.stream));
    // The gradients of the block follow it (after the last step this hop brings them home).
    RING_RETURN_IF_ERROR(transport.start(dkv[cur], dkv[1 - cur], 2 * kv_elems * 4, local.device, local.stream));
    RING_RETURN_IF_ERROR(transport.wait(local.stream));
    cur = 1 - cur;
  }
  RING_RETURN_IF_ERROR(ops.convert(local.dq, dq_acc, dt, q_elems));
  RING_RETURN_IF_ERROR(ops.convert(local.dk, dkv[cur], dt, kv_elems));
  RING_RETURN_IF_ERROR(ops.convert(local.dv, dkv[cur] + kv_elems, dt, kv_elems));
  return ops.sync();
}

// A failed call may leave work queued that uses the workspace: wait for it, so the
// next call can reuse the buffers.
Status ring_forward(const FwdParams& local, RingTransport& transport, bool zigzag) {
  const Status st = ring_forward_steps(local, transport, zigzag);
  if (!st.ok()) (void)Ops(local.device, local.stream).sync();
  return st;
}

Status ring_backward(const BwdParams& local, RingTransport& transport, bool zigzag) {
  const Status st = ring_backward_steps(local, transport, zigzag);
  if (!st.ok()) (void)Ops(local.device, local.stream).sync();
  return st;
}

// ---------------------------------------------------------------------------
// Thread transport: W threads of one process; a barrier-guarded mailbox.
// ---------------------------------------------------------------------------
namespace {

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const int gen = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen != generation_; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_;
  int waiting_ = 0;
  int generation_ = 0;
};

struct ThreadRingShared {
  explicit ThreadRingShared(int w) : world(w), send(w, nullptr), barrier(w) {}
  int world;
  std::vector<const void*> send;
  Barrier barrier;
};

class ThreadRing : public RingTransport {
 public:
  ThreadRing(std::shared_ptr<ThreadRingShared> shared, int rank) : shared_(std::move(shared)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return shared_->world; }
  Status start(const void* send, void* recv, size_t bytes, Device device, void* stream) override {
    Ops ops(device, stream);
    Status st = ops.sync();  // the block must be complete before a neighbour copies it
    shared_->send[rank_] = send;
    shared_->barrier.arrive_and_wait();
    if (st.ok()) st = ops.copy(recv, shared_->send[(rank_ - 1 + shared_->world) % shared_->world], bytes);
    if (st.ok()) st = ops.sync();
    shared_->barrier.arrive_and_wait();  // nobody reuses its send buffer before every copy is done
    return st;
  }
  Status wait(void*) override { return Status::Ok(); }

 private:
  std::shared_ptr<ThreadRingShared> shared_;
  int rank_;
};

}  // namespace

#if FLASHATTN_WITH_NCCL
namespace cuda {
std::unique_ptr<RingTransport> make_nccl_transport(void* nccl_comm);  // nccl_transport.cu
}
#endif

std::unique_ptr<RingTransport> make_nccl_ring(void* nccl_comm) {
#if FLASHATTN_WITH_NCCL
  return cuda::make_nccl_transport(nccl_comm);
#else
  (void)nccl_comm;
  return nullptr;
#endif
}

bool nccl_compiled() { return FLASHATTN_WITH_NCCL != 0; }

std::vector<std::unique_ptr<RingTransport>> make_thread_ring(int world_size) {
  auto shared = std::make_shared<ThreadRingShared>(world_size);
  std::vector<std::unique_ptr<RingTransport>> ring;
  for (int r = 0; r < world_size; ++r) ring.push_back(std::make_unique<ThreadRing>(shared, r));
  return ring;
}

}  // namespace flashattn
