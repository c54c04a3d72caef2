// STUB (to be replaced): CPU softmax.
#include "cpu/cpu_backend.h"
namespace flashattn { namespace cpu {
Status softmax(const SoftmaxParams&) { return Status::Unsupported("CPU softmax not implemented yet"); }
}}  // namespace flashattn::cpu
