// STUB: replaced by the real kernel.
#include "cuda/cuda_backend.h"
namespace flashattn { namespace cuda {
Status hopper_forward(const FwdParams&) { return Status::Unsupported("hopper_forward is not implemented yet"); }
}}  // namespace flashattn::cuda
