/* Wine 8.0 (Debian 12) has no bcryptprimitives.dll; Rust's std on Windows
   takes its randomness from ProcessPrng there. Test-only stand-in. */
#include <windows.h>
#define RtlGenRandom SystemFunction036
BOOLEAN WINAPI RtlGenRandom(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    return RtlGenRandom(data, (ULONG)len);
}
