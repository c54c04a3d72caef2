// STUB: flashattn-bench (to be replaced).
#include <cstdio>
#include "flashattn/flashattn.h"
int main() { std::printf("flashattn %s\n", flashattn::version()); return 0; }
