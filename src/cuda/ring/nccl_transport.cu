// NCCL transport of ring attention: one rank per GPU. The exchange runs on its
// own stream, ordered after the producer stream by an event, so the next K/V
// block travels while the attention kernels compute on the current one.
#if FLASHATTN_WITH_NCCL
#include <nccl.h>

#include <memory>
#include <string>

#include "cuda/cuda_utils.cuh"
#include "flashattn/ring.h"

namespace flashattn {
namespace cuda {
namespace {

Status nccl_status(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return Status::Ok();
  return Status::Cuda(std::string(what) + ": " + ncclGetErrorString(r));
}

class NcclRing : public RingTransport {
 public:
  explicit NcclRing(ncclComm_t comm) : comm_(comm) {
    ncclCommUserRank(comm_, &rank_);
    ncclCommCount(comm_, &world_);
    cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking);
    cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming);
    cudaEventCreateWithFlags(&done_, cudaEventDisableTiming);
  }
  ~NcclRing() override {
    cudaEventDestroy(ready_);
    cudaEventDestroy(done_);
    cudaStreamDestroy(comm_stream_);
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  Status start(const void* send, void* recv, size_t bytes, Device, void* stream) override {
    FA_CUDA_CHECK(cudaEventRecord(ready_, as_stream(stream)));
    FA_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    Status st = nccl_status(ncclGroupStart(), "ncclGroupStart");
    if (st.ok()) st = nccl_status(ncclSend(send, bytes, ncclUint8, (rank_ + 1) % world_, comm_, comm_stream_), "ncclSend");
    if (st.ok())
      st = nccl_status(ncclRecv(recv, bytes, ncclUint8, (rank_ - 1 + world_) % world_, comm_, comm_stream_), "ncclRecv");
    Status end = nccl_status(ncclGroupEnd(), "ncclGroupEnd");
    if (!st.ok()) return st;
    if (!end.ok()) return end;
    FA_CUDA_CHECK(cudaEventRecord(done_, comm_stream_));
    return Status::Ok();
  }
  Status wait(void* stream) override {
    FA_CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream), done_, 0));
    return Status::Ok();
  }

 private:
  ncclComm_t comm_;
  int rank_ = 0, world_ = 1;
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
};

}  // namespace

std::unique_ptr<RingTransport> make_nccl_transport(void* nccl_comm) {
  return std::make_unique<NcclRing>(static_cast<ncclComm_t>(nccl_comm));
}

}  // namespace cuda
}  // namespace flashattn
#endif  // FLASHATTN_WITH_NCCL
