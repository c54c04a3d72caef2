// flashattn-bench: times the library through its public API and prints one
// table with torch's numbers from the same run (bench/torch_sdpa.py).
//
//   flashattn-bench                 CPU: cpu_flash (+ reference on tiny shapes) vs torch CPU SDPA, softmax GB/s
//   flashattn-bench --gpu           CUDA rungs vs torch SDPA flash / cudnn (bf16; --dtype fp16)
//   flashattn-bench --gpu --bwd     backward (fa2 / auto) vs torch
//   flashattn-bench --gpu --decode  Nq = 1 KV-cache decode, contiguous and paged: KV-read GB/s
//   flashattn-bench --ring          ring attention over the machine's GPUs (NCCL) vs one GPU: scaling
//   --quick                         a seconds-long smoke sweep of the chosen mode
//   --b --h --hkv --n --nk --d --causal 0|1 --dtype fp32|fp16|bf16 --reps R --threads T --no-torch
//   --max-seconds S / --row-timeout S   bounds of the GPU mode (a hung kernel ends the run with a partial table)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bench.h"
#include "flashattn/flashattn.h"

namespace {

void usage() {
  std::printf(
      "usage: flashattn-bench [--gpu] [--bwd] [--decode] [--softmax] [--varlen] [--ring] [--diag] [--quick] [--no-torch]\n"
      "                       [--b B] [--h H] [--hkv HKV] [--n N] [--nk NK] [--d D] [--causal 0|1]\n"
      "                       [--dtype fp32|fp16|bf16] [--reps R] [--threads T] [--splits S (decode num_splits)]\n"
      "                       [--max-seconds S (GPU, default 150)] [--row-timeout S (GPU, default 60)]\n"
      "default: CPU mode (fwd fp32 B=1 H=8 N=2048 D=64/128, causal and not; a bwd row; softmax GB/s).\n"
      "--gpu: forward of every CUDA rung for 16k tokens per batch, hidden 2048 (B = 16384/N, H = 2048/D),\n"
      "       N in 512..16k, D in 64/128/256, vs torch SDPA flash and cudnn; --bwd backward; --decode Nq=1;\n"
      "       --softmax only the row-softmax sweep (GB/s vs a device copy and torch.softmax).\n"
      "       --varlen  prefill of a packed ragged batch (cu_seqlens, 16 sequences, 16k tokens) vs the\n"
      "                 dense batch of the same tokens (TFLOPS count each sequence's own work); with --bwd\n"
      "                 the backward of both.\n"
      "--ring: ring attention over 1, 2, 4, 8 GPUs (NCCL, one rank per GPU) vs one GPU on the whole\n"
      "        sequence: fwd/bwd time, TFLOPS, scaling efficiency (--n total tokens, default 16k x GPUs).\n"
      "--diag: the Hopper forward (default d128 N=8k) timed back to back, isolated, after an L2 flush,\n"
      "        in a CUDA graph, for its default / no_persistent / static_sched variants (no torch).\n"
      "FLOPs: fwd 4*B*H*Nq*Nk*D (/2 causal), bwd 2.5x fwd. Times: median, after warm-up.\n");
}

}  // namespace

int main(int argc, char** argv) {
  using flashattn::bench::Options;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines reach a log even if the run is killed
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "flashattn-bench: %s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    auto integer = [&](const char* name) -> int64_t {
      const char* v = value(name);
      char* end = nullptr;
      const long long x = std::strtoll(v, &end, 10);
      if (end == v || *end != '\0' || x < 0) {
        std::fprintf(stderr, "flashattn-bench: %s wants a non-negative integer, got '%s'\n", name, v);
        std::exit(2);
      }
      return x;
    };
    if (a == "--gpu") o.gpu = true;
    else if (a == "--cpu") o.gpu = false;
    else if (a == "--quick") o.quick = true;
    else if (a == "--bwd") o.bwd = true;
    else if (a == "--decode") o.decode = true;
    else if (a == "--softmax") o.softmax = true;
    else if (a == "--varlen") o.varlen = true;
    else if (a == "--ring") o.ring = true;
    else if (a == "--diag") o.diag = true;
    else if (a == "--no-torch") o.torch = false;
    else if (a == "--b") o.b = integer("--b");
    else if (a == "--h") o.h = integer("--h");
    else if (a == "--hkv") o.hkv = integer("--hkv");
    else if (a == "--n") o.n = integer("--n");
    else if (a == "--nk") o.nk = integer("--nk");
    else if (a == "--d") o.d = integer("--d");
    else if (a == "--causal") o.causal = static_cast<int>(integer("--causal") != 0);
    else if (a == "--reps") o.reps = static_cast<int>(integer("--reps"));
    else if (a == "--threads") o.threads = static_cast<int>(integer("--threads"));
    else if (a == "--splits") o.splits = static_cast<int>(integer("--splits"));
    else if (a == "--max-seconds") o.max_seconds = static_cast<int>(integer("--max-seconds"));
    else if (a == "--row-timeout") o.row_timeout = static_cast<int>(integer("--row-timeout"));
    else if (a == "--dtype") {
      o.dtype = value("--dtype");
      if (o.dtype == "float32") o.dtype = "fp32";
      if (o.dtype == "float16" || o.dtype == "half") o.dtype = "fp16";
      if (o.dtype == "bfloat16") o.dtype = "bf16";
      if (o.dtype != "fp32" && o.dtype != "fp16" && o.dtype != "bf16") {
        std::fprintf(stderr, "flashattn-bench: --dtype must be fp32, fp16 or bf16 (got '%s')\n", o.dtype.c_str());
        return 2;
      }
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else {
      std::fprintf(stderr, "flashattn-bench: unknown argument '%s'\n", a.c_str());
      usage();
      return 2;
    }
  }
  std::printf("flashattn %s, CUDA backend %s\n", flashattn::version(),
              flashattn::cuda_compiled() ? "compiled" : "not compiled");
  if (o.ring) return flashattn::bench::run_ring(o);
  if (o.diag) return flashattn::bench::run_diag(o);
  return o.gpu ? flashattn::bench::run_gpu(o) : flashattn::bench::run_cpu(o);
}
