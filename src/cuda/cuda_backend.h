// CUDA side of the API, callable from plain C++ (no CUDA headers needed).
// Params are already validated by the API layer; each function checks only
// what its kernels can't do (StatusCode::kUnsupported, with the reason).
#pragma once

#include "flashattn/kvcache.h"
#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {
namespace cuda {

// dispatch.cu: picks the rung for Kernel::kAuto and forwards to one below.
Status forward(const FwdParams& p);
Status backward(const BwdParams& p);
Status softmax(const SoftmaxParams& p);
int device_count();

// One function per rung (each in its own file under src/cuda/).
Status naive_forward(const FwdParams& p);    // naive.cu
Status fa1_forward(const FwdParams& p);      // fa1.cu
Status fa2_forward(const FwdParams& p);      // fa2/ (sm80+ tensor cores)
Status fa2_backward(const BwdParams& p);     // fa2/ backward
Status hopper_forward(const FwdParams& p);   // sm90/ (sm90a)
Status hopper_backward(const BwdParams& p);  // sm90/ backward (sm90a; head dims <= 128; not deterministic)
Status softmax_forward(const SoftmaxParams& p);  // softmax.cu
// decode/: split-KV (flash-decoding) forward for KV-cache / varlen requests with
// few query rows per kv head (docs/07-inference.md), and the KV-cache append.
Status decode_forward(const FwdParams& p);
Status append_kv(const KvAppendParams& p);

// Varlen LSE is [batch, heads_q, max_seqlen_q]: the prefill kernels write each
// sequence's rows; this sets the rest to -inf first (as the decode kernel and the
// CPU reference leave them). No-op unless cu_seqlens_q and lse are set. dispatch.cu.
Status fill_varlen_lse_padding(const FwdParams& p, void* stream);  // stream: a cudaStream_t

// Does the current device support the Hopper rung (sm_90 and compiled for it)?
bool hopper_available(int device_index);

}  // namespace cuda
}  // namespace flashattn
