// The Hopper forward kernel (sm_90a): warp-specialized, persistent.
//   WG0: producer (registers given back with setmaxnreg.dec; one thread issues TMA)
//   WG1, WG2 (, WG3): consumers (setmaxnreg.inc; wgmma + online softmax + epilogue)
// Included only by the hdimNNN instantiation files.
#pragma once

#include "cuda/cuda_utils.cuh"
#include "cuda/sm90/consumer.cuh"
#include "cuda/sm90/kernel_params.cuh"
#include "cuda/sm90/producer.cuh"
#include "cuda/sm90/ptx.cuh"
#include "cuda/sm90/traits.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

template <class Tr, bool kOverlap>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    hopper_fwd_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                      const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ KernelParams p) {
  extern __shared__ uint8_t smem_raw[];
  auto& s = *reinterpret_cast<SharedStorage<Tr>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                                  ~static_cast<uintptr_t>(1023));
  const int warp = threadIdx.x / 32;
  if (threadIdx.x == 0) {
    prefetch_tensormap(&tm_q);
    prefetch_tensormap(&tm_k);
    prefetch_tensormap(&tm_v);
    mbar_init(&s.q_full, 1);
    mbar_init(&s.q_empty, Tr::kConsumerWarps);
    for (int i = 0; i < Tr::kStages; ++i) {
      mbar_init(&s.k_full[i], 1);
      mbar_init(&s.v_full[i], 1);
      mbar_init(&s.k_empty[i], Tr::kConsumerWarps);
      mbar_init(&s.v_empty[i], Tr::kConsumerWarps);
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warp < 4) {
    // Producer warpgroup: 24 registers are plenty for address arithmetic.
    setmaxnreg_dec<24>();
    if (threadIdx.x == 0) producer_loop<Tr>(s, p, &tm_q, &tm_k, &tm_v);
  } else {
    // 128 x 24 + 256 x 240 = 64512 <= 65536 registers (3 consumer WGs: 384 x 160).
    setmaxnreg_inc<Tr::kConsumerRegs>();
    Consumer<Tr>::template run<kOverlap>(s, p);
  }
}

template <class Tr, bool kOverlap>
Status launch_variant(const LaunchArgs& a) {
  constexpr int smem = smem_bytes<Tr>();
  static PerDeviceOnce smem_opt_in;
  FA_CUDA_CHECK(smem_opt_in.run([] {
    return cudaFuncSetAttribute(hopper_fwd_kernel<Tr, kOverlap>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  }));
  hopper_fwd_kernel<Tr, kOverlap><<<a.grid, Tr::kThreads, smem, a.stream>>>(a.tm_q, a.tm_k, a.tm_v, a.params);
  FA_CUDA_CHECK_LAUNCH("hopper_fwd_kernel");
  return Status::Ok();
}

template <class Tr>
Status launch_traits(const LaunchArgs& a) {
  static_assert(smem_bytes<Tr>() <= 227 * 1024, "shared storage exceeds the 227 KB opt-in limit");
  // hdim 256 spills 16 B (two values reloaded per KV block) in the overlapped
  // loop and is still 2-15 % faster with it on the H100 (docs/06-hopper.md).
  if (!a.no_overlap) return launch_variant<Tr, true>(a);
  return launch_variant<Tr, false>(a);
}

template <int kHeadDim, bool kBF16>
Status launch_hopper_fwd(const LaunchArgs& a) {
  if constexpr (kHeadDim == 64) {
    if (a.block_m == 192) return launch_traits<Traits<kHeadDim, kBF16, 3>>(a);
    if (a.sync_handoff) return launch_traits<Traits<kHeadDim, kBF16, 2, true>>(a);
  }
  return launch_traits<Traits<kHeadDim, kBF16>>(a);
}

}}}  // namespace flashattn::cuda::sm90
