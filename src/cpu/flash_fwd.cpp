// STUB (to be replaced by the fast CPU kernel): forwards to the reference.
#include "cpu/cpu_backend.h"
namespace flashattn { namespace cpu {
Status flash_forward(const FwdParams& p) { return reference_forward(p); }
Status flash_backward(const BwdParams& p) { return reference_backward(p); }
}}  // namespace flashattn::cpu
