// KV-cache append for inference (docs/07-inference.md).
//
// append_kv writes seqlen_new new key/value rows of every sequence into a
// contiguous or paged cache, at positions cache_seqlens[b] .. cache_seqlens[b] +
// seqlen_new - 1, optionally applying rotary embedding (RoPE) to the new keys
// and, in place, to q. It does not advance cache_seqlens: the caller adds
// seqlen_new afterwards (as flash-attn's kvcache API expects), then calls
// flashattn::forward with seqused_k = the new lengths.
#pragma once

#include <cstdint>

#include "flashattn/params.h"
#include "flashattn/status.h"

namespace flashattn {

struct KvAppendParams {
  // New rows: k_new [batch, seqlen_new, heads_kv, head_dim], v_new [batch, seqlen_new, heads_kv, head_dim_v].
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  int64_t k_new_batch_stride = 0, k_new_row_stride = 0, k_new_head_stride = 0;
  int64_t v_new_batch_stride = 0, v_new_row_stride = 0, v_new_head_stride = 0;

  // Cache. Contiguous (block_table == nullptr): [batch, capacity, heads_kv, dim].
  // Paged: page pools [num_pages, page_size, heads_kv, dim] (batch stride = page
  // stride), key j of sequence b in page block_table[b * block_table_batch_stride + j / page_size].
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t k_cache_batch_stride = 0, k_cache_row_stride = 0, k_cache_head_stride = 0;
  int64_t v_cache_batch_stride = 0, v_cache_row_stride = 0, v_cache_head_stride = 0;
  const int32_t* block_table = nullptr;
  int64_t block_table_batch_stride = 0;
  int64_t page_size = 0;
  int64_t num_pages = 0;

  // [batch] int32: keys already in the cache (where the new rows go). Required.
  const int32_t* cache_seqlens = nullptr;

  int64_t batch = 0;
  int64_t seqlen_new = 0;  // new rows per sequence (>= 1)
  int64_t capacity = 0;    // keys a sequence may hold (the forward's seqlen_k); paged: pages per row * page_size
  int64_t heads_kv = 0;
  int64_t head_dim = 0;    // multiple of 8, at most 256
  int64_t head_dim_v = 0;  // 0 = head_dim
  DType dtype = DType::kFloat16;

  // Rotary embedding (optional; rotary_dim == 0 = off). cos/sin are fp32
  // [rotary_max_pos, rotary_dim / 2], row-major. New row t of sequence b is at
  // position cache_seqlens[b] + t (also for q row t). Dims >= rotary_dim pass through.
  //   non-interleaved (GPT-NeoX): pairs (x[i], x[i + rotary_dim/2]) use cos/sin[pos][i]
  //   interleaved (GPT-J):        pairs (x[2i], x[2i + 1])         use cos/sin[pos][i]
  //   (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)
  const float* rotary_cos = nullptr;
  const float* rotary_sin = nullptr;
  int64_t rotary_dim = 0;  // even, <= head_dim
  int64_t rotary_max_pos = 0;
  bool rotary_interleaved = false;

  // Optional q to rotate in place: [batch, seqlen_new, heads_q, head_dim].
  void* q = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t heads_q = 0;

  Device device = Device::kCPU;
  int device_index = -1;
  void* stream = nullptr;
};

// Checks (CPU: also every cache_seqlens / block_table entry and the rotary
// positions; CUDA: shapes and pointers only, rows that would fall outside the
// capacity or on an out-of-range page are skipped by the kernel), then appends.
Status validate(const KvAppendParams& params);
Status append_kv(const KvAppendParams& params);

}  // namespace flashattn
