// Status and errors of the flashattn C++ API.
//
// Every entry point returns a Status; nothing below the API boundary throws.
// The convenience layer (flashattn::check / the *_or_throw helpers) turns a
// non-ok Status into flashattn::Error.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace flashattn {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // the caller passed something that can never work (shape, dtype, pointer, ...)
  kUnsupported,      // valid request, but no compiled kernel handles it (head dim, arch, feature)
  kNotCompiled,      // the backend asked for (e.g. CUDA) is not part of this build
  kCudaError,        // a CUDA runtime call failed
  kInternal,         // a bug in flashattn
};

const char* status_code_name(StatusCode code);

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;  // what was wrong and what is allowed; empty when ok

  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
  static Status Invalid(std::string msg) { return {StatusCode::kInvalidArgument, std::move(msg)}; }
  static Status Unsupported(std::string msg) { return {StatusCode::kUnsupported, std::move(msg)}; }
  static Status NotCompiled(std::string msg) { return {StatusCode::kNotCompiled, std::move(msg)}; }
  static Status Cuda(std::string msg) { return {StatusCode::kCudaError, std::move(msg)}; }
  static Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }
};

// Thrown by the convenience layer; carries the Status it came from.
class Error : public std::runtime_error {
 public:
  explicit Error(Status status)
      : std::runtime_error(std::string(status_code_name(status.code)) + ": " + status.message),
        status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

inline void check(const Status& status) {
  if (!status.ok()) throw Error(status);
}

}  // namespace flashattn
