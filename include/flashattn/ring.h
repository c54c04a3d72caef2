// Ring attention (context parallelism): the sequence is sharded over W ranks;
// each rank keeps its shard of Q and passes its K/V shard around the ring, so
// after W steps every query has met every key. Partial results are merged with
// the online-softmax rule (docs/01-online-softmax.md, equation (4)) using the
// LSE every flashattn kernel returns. docs/08-ring-attention.md has the math.
//
// Sharding: rank r holds global chunk r (plain), or, with zigzag = true, chunks
// r and 2W-1-r of 2W equal chunks, so that causal work is balanced across ranks.
// Every rank's FwdParams/BwdParams describe its LOCAL shard only
// (seqlen_q = seqlen_k = local length, contiguous [batch, local, heads, dim]).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {

// Moves one buffer one hop around the ring: `send` goes to rank + 1, `recv`
// receives from rank - 1. Implementations: threads in one process (the CPU
// simulation, also fine for CUDA buffers of one GPU) and NCCL (one rank per GPU).
class RingTransport {
 public:
  RingTransport();
  virtual ~RingTransport();
  RingTransport(const RingTransport&) = delete;
  RingTransport& operator=(const RingTransport&) = delete;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Starts the exchange; `send` must stay untouched until wait() returns.
  // `device` says where the buffers live; `stream` is the CUDA stream they are
  // produced and consumed on (ignored on the CPU).
  virtual Status start(const void* send, void* recv, size_t bytes, Device device, void* stream) = 0;
  // Completes the last start(): afterwards work queued on `stream` may read `recv`.
  virtual Status wait(void* stream) = 0;

  // Scratch of ring_forward / ring_backward on this rank (accumulators, the two K/V
  // buffers, partial results), grown on demand and kept until the transport is
  // destroyed: allocating and freeing it per call cost more than the attention itself
  // on an H100 (docs/08-ring-attention.md). Defined in src/ring_attention.cpp.
  struct Workspace;
  Workspace& workspace();

 private:
  std::unique_ptr<Workspace> workspace_;
};

// W transports for W threads of one process (rank i uses element i).
std::vector<std::unique_ptr<RingTransport>> make_thread_ring(int world_size);

// NCCL transport over an existing communicator (ncclComm_t passed as void*).
// Returns nullptr when flashattn was built without NCCL.
std::unique_ptr<RingTransport> make_nccl_ring(void* nccl_comm);
bool nccl_compiled();

// Forward on this rank's shard. `local.lse` is required (it is how shards merge).
// Causal (bottom-right = top-left here since the global Nq == Nk) or full attention;
// sliding windows are not supported by the ring yet.
Status ring_forward(const FwdParams& local, RingTransport& transport, bool zigzag);
// Backward on this rank's shard, given the ring forward's o and lse.
Status ring_backward(const BwdParams& local, RingTransport& transport, bool zigzag);

}  // namespace flashattn
