// Ring attention simulated with W threads on the CPU (tests/common/ring_case.cpp).
#include "flashattn/ring.h"
#include "ring_case.h"

namespace flashattn {
namespace testing {
namespace {

class RingSim : public ::testing::TestWithParam<RingCase> {};
TEST_P(RingSim, MatchesSingleDevice) { check_ring_case(GetParam(), Device::kCPU); }

INSTANTIATE_TEST_SUITE_P(
    Ring, RingSim,
    ::testing::Values(RingCase{1, false, false, 4, 4, DType::kFloat32}, RingCase{1, true, true, 4, 2, DType::kFloat32},
                      RingCase{2, false, false, 4, 2, DType::kFloat32}, RingCase{2, false, true, 4, 4, DType::kFloat32},
                      RingCase{2, true, true, 4, 1, DType::kFloat32}, RingCase{3, true, true, 4, 2, DType::kFloat32},
                      RingCase{4, true, true, 4, 4, DType::kFloat32}, RingCase{4, false, true, 4, 2, DType::kFloat32},
                      RingCase{4, true, false, 8, 2, DType::kBFloat16},
                      RingCase{3, true, true, 4, 2, DType::kBFloat16}),
    [](const auto& info) { return case_name(info.param); });

TEST(Ring, RefusesWhatItCannotDo) {
  auto t = make_thread_ring(1);
  Shape s;
  s.seqlen_q = 8;
  s.seqlen_k = 6;
  Problem pb(s, 1);
  Status st = ring_forward(pb.params, *t[0], false);
  EXPECT_EQ(st.code, StatusCode::kInvalidArgument);
  EXPECT_NE(st.message.find("must be equal"), std::string::npos) << st.message;
  Problem odd(Shape{1, 7, 7, 1, 1, 64}, 2);
  st = ring_forward(odd.params, *t[0], /*zigzag=*/true);
  EXPECT_NE(st.message.find("even local length"), std::string::npos) << st.message;
  Problem win(Shape{1, 8, 8, 1, 1, 64, false, 4, 0}, 3);
  st = ring_forward(win.params, *t[0], false);
  EXPECT_EQ(st.code, StatusCode::kUnsupported) << st.message;
}

}  // namespace
}  // namespace testing
}  // namespace flashattn
