// TMA tensor maps (tma_map.h), encoded with cuTensorMapEncodeTiled from the
// driver the runtime already loaded (no -lcuda).
#include "cuda/sm90/tma_map.h"

#include <cuda_runtime.h>

#include <string>

#include "cuda/cuda_utils.cuh"

namespace flashattn { namespace cuda { namespace sm90 {

namespace {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

Status get_encode_fn(EncodeTiledFn* fn) {
  static EncodeTiledFn cached = nullptr;
  if (cached == nullptr) {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q{};
    FA_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || ptr == nullptr)
      return Status::Unsupported("hopper: the driver has no cuTensorMapEncodeTiled");
    cached = reinterpret_cast<EncodeTiledFn>(ptr);
  }
  *fn = cached;
  return Status::Ok();
}

}  // namespace

Status make_tma_map(CUtensorMap* map, const char* name, const void* ptr, DType dtype, int64_t dim, int64_t seqlen,
                    int64_t heads, int64_t batch, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                    int box_rows) {
  EncodeTiledFn encode = nullptr;
  Status st = get_encode_fn(&encode);
  if (!st.ok()) return st;
  const int64_t sizes[3] = {seqlen, heads, batch};
  const int64_t strides[3] = {row_stride, head_stride, batch_stride};
  cuuint64_t gdim[4] = {static_cast<cuuint64_t>(dim), 0, 0, 0};
  cuuint64_t gstride[3];
  for (int i = 0; i < 3; ++i) {
    gdim[i + 1] = static_cast<cuuint64_t>(sizes[i]);
    int64_t bytes = strides[i] * 2;
    if (sizes[i] == 1) bytes = 16 * ((dim * 2 + 15) / 16);  // never stepped over; any legal value
    if (bytes <= 0 || bytes % 16 != 0 || bytes >= (int64_t{1} << 40))
      return Status::Unsupported(std::string("hopper: ") + name +
                                 " has a zero or unsupported stride for TMA (broadcast strides are not supported)");
    gstride[i] = static_cast<cuuint64_t>(bytes);
  }
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t estride[4] = {1, 1, 1, 1};
  const CUresult r =
      encode(map, dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
             const_cast<void*>(ptr), gdim, gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return Status::Unsupported(std::string("hopper: cuTensorMapEncodeTiled refused ") + name + " (CUresult " +
                               std::to_string(static_cast<int>(r)) + ")");
  return Status::Ok();
}

}}}  // namespace flashattn::cuda::sm90
