/* Library identity: ABI version and what the build enabled. */
#include "api.h"

int lm_abi_version(void) { return LM_ABI_VERSION; }

const char *lm_build_info(void) {
    return "llamette native"
#if defined(__AVX512F__)
           " avx512f"
#endif
#if defined(__AVX512VNNI__)
           " avx512vnni"
#endif
#if defined(__AVX2__)
           " avx2"
#endif
#if defined(__FMA__)
           " fma"
#endif
#if defined(__F16C__)
           " f16c"
#endif
#if defined(__ARM_NEON)
           " neon"
#endif
        ;
}
