// flashattn: exact attention in C++ and CUDA.
//
// Entry points of the C++ library. Each validates its params once (the same
// checks as flashattn::validate) and then dispatches to the kernel picked by
// params.kernel / params.device. None of them throws; see status.h for the
// throwing convenience wrappers.
#pragma once

#include "flashattn/online_softmax.h"
#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {

// Checks a request without running it: shapes, dtypes, strides, alignment,
// masks, 32-bit index limits of the chosen kernel, and whether a kernel for it
// is compiled. The message says what was wrong and what is allowed.
Status validate(const FwdParams& params);
Status validate(const BwdParams& params);
Status validate(const SoftmaxParams& params);

Status forward(const FwdParams& params);
Status backward(const BwdParams& params);
Status softmax(const SoftmaxParams& params);

// Throwing variants (flashattn::Error).
inline void forward_or_throw(const FwdParams& p) { check(forward(p)); }
inline void backward_or_throw(const BwdParams& p) { check(backward(p)); }
inline void softmax_or_throw(const SoftmaxParams& p) { check(softmax(p)); }

// Build facts.
bool cuda_compiled();          // was the CUDA backend built into this library
int cuda_device_count();       // 0 when not compiled or no GPU/driver
const char* version();

}  // namespace flashattn
