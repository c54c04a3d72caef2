// CPU kernels behind the API. Params are already validated.
#pragma once

#include <vector>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {
namespace cpu {

// --- The oracle: naive 3-pass attention accumulating in double (reference.cpp).
// Results in double, contiguous: out [batch, seqlen_q, heads_q, head_dim_v],
// lse [batch, heads_q, seqlen_q] (-inf for fully masked rows).
// Varlen / KV cache (docs/07-inference.md): with cu_seqlens_q, out is packed
// [total_q, heads_q, head_dim_v] like q; lse stays [batch, heads_q, seqlen_q(max)]
// with -inf past each sequence's end. seqused_k and paged K/V (block_table) are
// read in place; masks align to each sequence's own lengths.
struct RefForward {
  std::vector<double> out;
  std::vector<double> lse;
};
RefForward reference_forward_f64(const FwdParams& p);

// Gradients in double, contiguous [batch, seqlen, heads, dim] each (varlen:
// packed [total, heads, dim]; paged dK/dV: [num_pages * page_size, heads_kv, dim]). Uses only
// q, k, v, dout of p (recomputes the forward itself; ignores p.o and p.lse).
struct RefBackward {
  std::vector<double> dq, dk, dv;
};
RefBackward reference_backward_f64(const BwdParams& p);

// Kernel::kReference: the oracle, rounded into p.o / p.lse (and dq/dk/dv).
Status reference_forward(const FwdParams& p);
Status reference_backward(const BwdParams& p);

// --- Kernel::kCpuFlash: tiled online-softmax attention (flash_fwd.cpp, flash_bwd.cpp).
Status flash_forward(const FwdParams& p);
Status flash_backward(const BwdParams& p);

// --- Row softmax, all three variants (softmax.cpp).
Status softmax(const SoftmaxParams& p);

}  // namespace cpu
}  // namespace flashattn
