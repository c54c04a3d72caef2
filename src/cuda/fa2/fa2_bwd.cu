// STUB: replaced by the real kernel.
#include "cuda/cuda_backend.h"
namespace flashattn { namespace cuda {
Status fa2_backward(const BwdParams&) { return Status::Unsupported("fa2_backward is not implemented yet"); }
}}  // namespace flashattn::cuda
