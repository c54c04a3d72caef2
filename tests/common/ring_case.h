// Ring attention simulated with W threads (one per rank), on the CPU or on one
// GPU: each rank's shard of the output, LSE and gradients must match
// single-device attention over the whole sequence (tests/cpu/test_ring.cpp,
// tests/gpu/test_ring_gpu.cpp).
#pragma once

#include <string>

#include "test_util.h"

namespace flashattn {
namespace testing {

struct RingCase {
  int world;
  bool zigzag;
  bool causal;
  int64_t heads_q, heads_kv;
  DType dtype;
};

std::string case_name(const RingCase& c);
// device CUDA: every rank on the current GPU with the thread transport, or, with
// nccl_devices > 0, rank r on GPU r % nccl_devices with an NCCL transport.
void check_ring_case(const RingCase& rc, Device device, int nccl_devices = 0);

}  // namespace testing
}  // namespace flashattn
