// Run-time dispatch for the hot loops: GCC builds an AVX2+FMA clone and a baseline clone of each
// marked function and picks one when the module loads (no hardware detection at build time).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SLS_CLONES __attribute__((target_clones("avx2,fma", "default")))
#else
#define SLS_CLONES
#endif
