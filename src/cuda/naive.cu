// STUB: replaced by the real kernel.
#include "cuda/cuda_backend.h"
namespace flashattn { namespace cuda {
Status naive_forward(const FwdParams&) { return Status::Unsupported("naive_forward is not implemented yet"); }
}}  // namespace flashattn::cuda
