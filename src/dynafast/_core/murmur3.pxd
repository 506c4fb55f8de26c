# MurmurHash3 x64_128, the one copy every extension that hashes cimports (ring tokens, merkle trees).
# Results equal mmh3.hash128 / mmh3.hash64(data, seed, signed=False) on every host. All inline: a token
# costs a few nanoseconds, so a call through another module's function table would be a large part of it.
from libc.stdint cimport uint32_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* Unaligned little-endian load: the hash must not depend on the host's byte order. */
    static inline uint64_t dynafast_load_le64(const unsigned char *p) {
        uint64_t v;
        memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    #define DYNAFAST_MURMUR3_C1 0x87c37b91114253d5ULL
    #define DYNAFAST_MURMUR3_C2 0x4cf5ad432745937fULL
    """
    const uint64_t MURMUR3_C1 "DYNAFAST_MURMUR3_C1"
    const uint64_t MURMUR3_C2 "DYNAFAST_MURMUR3_C2"
    uint64_t load_le64 "dynafast_load_le64" (const unsigned char *p) noexcept nogil


cdef struct Hash128:
    uint64_t h1     # the low 64 bits of the 128-bit result (mmh3.hash64(...)[0])
    uint64_t h2


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _fmix(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= <uint64_t>0xFF51AFD7ED558CCD
    k ^= k >> 33
    k *= <uint64_t>0xC4CEB9FE1A85EC53
    k ^= k >> 33
    return k


cdef inline void _block(uint64_t *h1, uint64_t *h2, uint64_t k1, uint64_t k2) noexcept nogil:
    k1 *= MURMUR3_C1
    k1 = _rotl(k1, 31)
    k1 *= MURMUR3_C2
    h1[0] ^= k1
    h1[0] = _rotl(h1[0], 27) + h2[0]
    h1[0] = h1[0] * 5 + 0x52DCE729
    k2 *= MURMUR3_C2
    k2 = _rotl(k2, 33)
    k2 *= MURMUR3_C1
    h2[0] ^= k2
    h2[0] = _rotl(h2[0], 31) + h1[0]
    h2[0] = h2[0] * 5 + 0x38495AB5


cdef inline Hash128 _finish(uint64_t h1, uint64_t h2, uint64_t k1, uint64_t k2,
                            Py_ssize_t rem, Py_ssize_t n) noexcept nogil:
    cdef Hash128 out
    if rem > 8:
        k2 *= MURMUR3_C2
        k2 = _rotl(k2, 33)
        k2 *= MURMUR3_C1
        h2 ^= k2
    if rem > 0:
        k1 *= MURMUR3_C1
        k1 = _rotl(k1, 31)
        k1 *= MURMUR3_C2
        h1 ^= k1
    h1 ^= <uint64_t>n
    h2 ^= <uint64_t>n
    h1 += h2
    h2 += h1
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 += h2
    h2 += h1
    out.h1 = h1
    out.h2 = h2
    return out


# MurmurHash3 x64_128 of n bytes.
cdef inline Hash128 mm3_x64_128(const unsigned char *data, Py_ssize_t n, uint32_t seed) noexcept nogil:
    cdef uint64_t h1 = seed, h2 = seed, k1 = 0, k2 = 0
    cdef Py_ssize_t i, nblocks = n // 16, rem = n & 15
    cdef const unsigned char *tail = data + nblocks * 16
    for i in range(nblocks):
        _block(&h1, &h2, load_le64(data + 16 * i), load_le64(data + 16 * i + 8))
    # Tail bytes little-endian into k1 (bytes 0..7) and k2 (bytes 8..14).
    i = rem - 1
    while i >= 8:
        k2 = (k2 << 8) | tail[i]
        i -= 1
    while i >= 0:
        k1 = (k1 << 8) | tail[i]
        i -= 1
    return _finish(h1, h2, k1, k2, rem, n)


# The same over the little-endian bytes of n 64-bit words, without serializing them.
cdef inline Hash128 mm3_words(const uint64_t *words, Py_ssize_t n, uint32_t seed) noexcept nogil:
    cdef uint64_t h1 = seed, h2 = seed
    cdef Py_ssize_t i
    for i in range(n // 2):
        _block(&h1, &h2, words[2 * i], words[2 * i + 1])
    if n & 1:
        return _finish(h1, h2, words[n - 1], 0, 8, 8 * n)
    return _finish(h1, h2, 0, 0, 0, 8 * n)
