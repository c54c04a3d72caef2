// Consumer of an installed flashattn: one query over two keys on the CPU,
// checked against the formula o = softmax(q.k / sqrt(d)) v by hand.
#include <cmath>
#include <cstdio>
#include <vector>

#include <flashattn/flashattn.h>

int main() {
  const int d = 8;
  std::vector<float> q(d), k(2 * d), v(2 * d), o(d, -1.0f);
  for (int i = 0; i < d; ++i) {
    q[i] = 0.1f * (i + 1);
    k[i] = 0.5f, k[d + i] = -0.25f * i;
    v[i] = 1.0f + i, v[d + i] = -2.0f;
  }
  flashattn::FwdParams p;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = o.data();
  p.batch = 1, p.seqlen_q = 1, p.seqlen_k = 2, p.heads_q = 1, p.heads_kv = 1, p.head_dim = d;
  flashattn::set_contiguous_strides(p);
  try {
    flashattn::forward_or_throw(p);
  } catch (const flashattn::Error& e) {
    std::printf("consumer: forward failed: %s\n", e.what());
    return 1;
  }
  double s0 = 0, s1 = 0;
  for (int i = 0; i < d; ++i) s0 += q[i] * k[i], s1 += q[i] * k[d + i];
  s0 /= std::sqrt(double(d)), s1 /= std::sqrt(double(d));
  const double m = std::fmax(s0, s1), p0 = std::exp(s0 - m), p1 = std::exp(s1 - m);
  for (int i = 0; i < d; ++i) {
    const double want = (p0 * v[i] + p1 * v[d + i]) / (p0 + p1);
    if (std::fabs(o[i] - want) > 1e-5) {
      std::printf("consumer: o[%d] = %f, expected %f\n", i, o[i], want);
      return 1;
    }
  }
  std::printf("consumer: flashattn %s forward ok (CUDA %s)\n", flashattn::version(),
              flashattn::cuda_compiled() ? "compiled" : "not compiled");
  return 0;
}
