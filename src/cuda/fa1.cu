// STUB: replaced by the real kernel.
#include "cuda/cuda_backend.h"
namespace flashattn { namespace cuda {
Status fa1_forward(const FwdParams&) { return Status::Unsupported("fa1_forward is not implemented yet"); }
}}  // namespace flashattn::cuda
