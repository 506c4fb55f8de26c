/* The logstore's in-memory keydir, CRC-32 and growable byte buffers, in plain C.
 *
 * Keydir layout (12 bytes + the key, padded, plus 10-15 bytes of index per key):
 *   - an arena of items {u16 seg, u16 klen, u32 off, u32 size, key bytes}, padded (df_item_span), appended in
 *     insertion order; a deleted item is marked dead (seg = DF_DEAD) and the arena is compacted when half
 *     of it is dead and no iterator is walking it;
 *   - an open-addressing index of 8-byte slots {u32 hash, u32 ref}, linear probing, backward-shift
 *     deletion (no tombstone slots), ref = 1 + arena offset / 4 (0 = empty). The slot count is any
 *     integer (the home slot is (hash * nslots) >> 32), so the index grows by 1.5x at 0.8 load and stays
 *     between 0.53 and 0.8 full.
 * Both arrays are large and randomly accessed: they ask for transparent huge pages (fewer TLB misses).
 * Iterators walk the arena by offset: positions stay valid across inserts, updates and deletes.
 */
#ifndef DYNAFAST_KEYDIR_H
#define DYNAFAST_KEYDIR_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define DF_DEAD 0xFFFFu
#define DF_MAX_SEGS 0xFFFEu
#define DF_ITEM_HEADER 12u

static void df_hugepages(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    if (n > (2u << 20) && (uintptr_t)p + n > a) madvise((void *)a, (uintptr_t)p + n - a, MADV_HUGEPAGE);
#endif
}

/* ---- CRC-32 (zlib's polynomial 0xEDB88320, so the reference can use zlib.crc32), slicing-by-8 ---- */
static uint32_t df_crc_table[8][256];

static void df_crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        df_crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            df_crc_table[t][i] = (df_crc_table[t - 1][i] >> 8) ^ df_crc_table[0][df_crc_table[t - 1][i] & 0xff];
}

/* Table-driven update of the running (inverted) CRC state. */
static inline uint32_t df_crc_sw(uint32_t crc, const unsigned char *p, size_t n) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8); /* little-endian hosts only (x86-64, aarch64) */
        uint32_t lo = (uint32_t)v ^ crc, hi = (uint32_t)(v >> 32);
        crc = df_crc_table[7][lo & 0xff] ^ df_crc_table[6][(lo >> 8) & 0xff] ^
              df_crc_table[5][(lo >> 16) & 0xff] ^ df_crc_table[4][lo >> 24] ^
              df_crc_table[3][hi & 0xff] ^ df_crc_table[2][(hi >> 8) & 0xff] ^
              df_crc_table[1][(hi >> 16) & 0xff] ^ df_crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = df_crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DF_HAVE_CLMUL 1
/* Carry-less multiplication folding (Gopal et al., "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ", Intel, 2009) for the reflected polynomial 0xEDB88320: fold 16 bytes at a time with
 * x^(128+32) and x^(128-32) mod P, reduce 128 -> 64 -> 32 bits, finish with a Barrett reduction.
 * n must be a multiple of 16 and at least 16; crc is the running (inverted) state. Records are small,
 * so one folding lane is enough; it avoids the table lookups that random reads evict from L1. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t df_crc_clmul(uint32_t crc, const unsigned char *p,
                                                                       size_t n) {
    const __m128i fold16 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL); /* lo: x^160, hi: x^96 */
    const __m128i fold64 = _mm_set_epi64x(0, 0x0163cd6124LL);               /* x^64 */
    const __m128i barrett = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL); /* lo: P', hi: mu */
    const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i x = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)crc));
    for (p += 16, n -= 16; n >= 16; p += 16, n -= 16) {
        __m128i lo = _mm_clmulepi64_si128(x, fold16, 0x00);
        __m128i hi = _mm_clmulepi64_si128(x, fold16, 0x11);
        x = _mm_xor_si128(_mm_xor_si128(lo, hi), _mm_loadu_si128((const __m128i *)p));
    }
    /* 128 -> 64 bits */
    __m128i t = _mm_clmulepi64_si128(x, fold16, 0x10);
    x = _mm_xor_si128(_mm_srli_si128(x, 8), t);
    /* 64 -> 32 bits */
    t = _mm_srli_si128(x, 4);
    x = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, low32), fold64, 0x00), t);
    /* Barrett reduction */
    t = _mm_clmulepi64_si128(_mm_and_si128(x, low32), barrett, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), barrett, 0x00);
    x = _mm_xor_si128(x, t);
    return (uint32_t)_mm_extract_epi32(x, 1);
}

static int df_clmul_ok = -1;
#endif

static uint32_t df_crc32(const unsigned char *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
#ifdef DF_HAVE_CLMUL
    if (df_clmul_ok < 0) {
        __builtin_cpu_init();
        df_clmul_ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    }
    if (df_clmul_ok && n >= 16) {
        size_t m = n & ~(size_t)15;
        crc = df_crc_clmul(crc, p, m);
        p += m;
        n -= m;
    }
#endif
    return df_crc_sw(crc, p, n) ^ 0xFFFFFFFFu;
}

/* ---- key hash (64-bit multiply-rotate; only needs to spread keys over the index) ---- */
static inline uint32_t df_hash(const unsigned char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h ^= v * 0x87c37b91114253d5ull;
        h = ((h << 31) | (h >> 33)) * 0x4cf5ad432745937full;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h ^= v * 0x87c37b91114253d5ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* ---- growable buffer ---- */
typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
} df_buf;

static int df_buf_reserve(df_buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    unsigned char *d = (unsigned char *)realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

static int df_buf_append(df_buf *b, const void *p, size_t n) {
    if (df_buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void df_buf_free(df_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- keydir ---- */
typedef struct {
    uint32_t hash;
    uint32_t ref;
} df_slot;

typedef struct {
    uint16_t seg; /* index into the engine's segment table; DF_DEAD once deleted */
    uint16_t klen;
    uint32_t off;
    uint32_t size;
    unsigned char key[4]; /* klen bytes; the item is padded to a multiple of 4 */
} df_item;

typedef struct {
    df_slot *slots;
    size_t nslots;
    size_t count;      /* live keys */
    size_t first[256]; /* live keys by their first byte: a count of one byte's prefix without a walk */
    unsigned char *arena;
    size_t arena_len;
    size_t arena_cap;
    size_t arena_dead; /* bytes of dead items */
} df_keydir;

/* Items of up to 32 bytes (keys of up to 20 bytes) take 16 or 32: in the page-aligned arena they then never
 * straddle a cache line, so a lookup costs one miss for the item, not two. Longer ones are 4-aligned. */
static inline size_t df_item_span(size_t klen) {
    size_t n = (DF_ITEM_HEADER + klen + 3) & ~(size_t)3;
    return n <= 16 ? 16 : n <= 32 ? 32 : n;
}

/* The arena is its own anonymous mapping: page-aligned, grown by mremap (no copy), huge-page eligible. */
static unsigned char *df_arena_new(size_t cap) {
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    df_hugepages(p, cap);
    return (unsigned char *)p;
}

static unsigned char *df_arena_resize(unsigned char *a, size_t old, size_t cap) {
#ifdef MREMAP_MAYMOVE
    void *p = mremap(a, old, cap, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) return NULL;
    df_hugepages(p, cap);
    return (unsigned char *)p;
#else
    unsigned char *p = df_arena_new(cap);
    if (!p) return NULL;
    memcpy(p, a, old < cap ? old : cap);
    munmap(a, old);
    return p;
#endif
}

static void df_arena_free(unsigned char *a, size_t cap) {
    if (a) munmap(a, cap);
}
static inline df_item *df_kd_item(df_keydir *kd, size_t pos) { return (df_item *)(kd->arena + pos); }

static inline size_t df_home(uint32_t h, size_t n) { return (size_t)(((uint64_t)h * n) >> 32); }

static int df_kd_init(df_keydir *kd) {
    memset(kd, 0, sizeof(*kd));
    kd->slots = (df_slot *)calloc(1024, sizeof(df_slot));
    kd->arena = df_arena_new(1 << 16);
    if (!kd->slots || !kd->arena) return -1;
    kd->nslots = 1024;
    kd->arena_cap = 1 << 16;
    return 0;
}

static void df_kd_free(df_keydir *kd) {
    free(kd->slots);
    df_arena_free(kd->arena, kd->arena_cap);
    memset(kd, 0, sizeof(*kd));
}

/* Bytes in use: the whole index (it is touched everywhere) and the used part of the arena (capacity
 * beyond it is never touched, so never resident). */
static size_t df_kd_memory(const df_keydir *kd) {
    return kd->slots ? kd->nslots * sizeof(df_slot) + kd->arena_len : 0;
}

static size_t df_kd_allocated(const df_keydir *kd) {
    return kd->slots ? kd->nslots * sizeof(df_slot) + kd->arena_cap : 0;
}

/* Slot index holding key, or -1. */
static inline ptrdiff_t df_kd_slot(const df_keydir *kd, const unsigned char *key, size_t klen, uint32_t h) {
    size_t i = df_home(h, kd->nslots);
    for (;;) {
        df_slot s = kd->slots[i];
        if (s.ref == 0) return -1;
        if (s.hash == h) {
            df_item *it = (df_item *)(kd->arena + ((size_t)(s.ref - 1) << 2));
            if (it->klen == klen && memcmp(it->key, key, klen) == 0) return (ptrdiff_t)i;
        }
        if (++i == kd->nslots) i = 0;
    }
}

/* df_kd_find of a key whose hash (df_hash) is known. */
static inline df_item *df_kd_find_h(const df_keydir *kd, const unsigned char *key, size_t klen, uint32_t h) {
    ptrdiff_t i = df_kd_slot(kd, key, klen, h);
    return i < 0 ? NULL : (df_item *)(kd->arena + ((size_t)(kd->slots[i].ref - 1) << 2));
}

static inline df_item *df_kd_find(const df_keydir *kd, const unsigned char *key, size_t klen) {
    return df_kd_find_h(kd, key, klen, df_hash(key, klen));
}

/* Lookups of many keys at once (a pipeline's, a merge's) ask for their memory ahead: each key's slot, and some
 * time later (once that is in cache) the item the slot points to. A lookup done one at a time waits for these two
 * misses in turn; asked for ahead, they overlap. Hints only: they read nothing that must be there. */
static inline void df_kd_prefetch_slot(const df_keydir *kd, uint32_t h) {
    __builtin_prefetch(&kd->slots[df_home(h, kd->nslots)]);
}

static inline void df_kd_prefetch_item(const df_keydir *kd, uint32_t h) {
    size_t i = df_home(h, kd->nslots);
    for (int probes = 0; probes < 8; probes++) {
        df_slot s = kd->slots[i];
        if (s.ref == 0) return;
        if (s.hash == h) { __builtin_prefetch(kd->arena + ((size_t)(s.ref - 1) << 2)); return; }
        if (++i == kd->nslots) i = 0;
    }
}

static int df_kd_grow(df_keydir *kd) {
    size_t n = kd->nslots + kd->nslots / 2;
    if (n >= ((size_t)1 << 32)) return -1;
    df_slot *ns = (df_slot *)calloc(n, sizeof(df_slot));
    if (!ns) return -1;
    df_hugepages(ns, n * sizeof(df_slot));
    for (size_t i = 0; i < kd->nslots; i++) {
        df_slot s = kd->slots[i];
        if (s.ref == 0) continue;
        size_t j = df_home(s.hash, n);
        while (ns[j].ref)
            if (++j == n) j = 0;
        ns[j] = s;
    }
    free(kd->slots);
    kd->slots = ns;
    kd->nslots = n;
    return 0;
}

static int df_kd_arena_room(df_keydir *kd, size_t need) {
    if (kd->arena_len + need <= kd->arena_cap) return 0;
    size_t cap = kd->arena_cap;
    while (cap < kd->arena_len + need) cap += cap / 2;
    if (cap > ((size_t)0xFFFFFFFEu << 2)) return -1; /* refs are u32 in 4-byte units: 16 GiB */
    unsigned char *a = df_arena_resize(kd->arena, kd->arena_cap, cap);
    if (!a) return -1;
    kd->arena = a;
    kd->arena_cap = cap;
    return 0;
}

/* Insert or update. Returns 1 when it replaced an entry (old location in *old), 0 when new, -1 no memory. */
static int df_kd_put(df_keydir *kd, const unsigned char *key, size_t klen, uint32_t seg, uint32_t off,
                     uint32_t size, df_item *old) {
    uint32_t h = df_hash(key, klen);
    ptrdiff_t i = df_kd_slot(kd, key, klen, h);
    if (i >= 0) {
        df_item *it = (df_item *)(kd->arena + ((size_t)(kd->slots[i].ref - 1) << 2));
        old->seg = it->seg;
        old->off = it->off;
        old->size = it->size;
        it->seg = (uint16_t)seg;
        it->off = off;
        it->size = size;
        return 1;
    }
    if ((kd->count + 1) * 5 > kd->nslots * 4 && df_kd_grow(kd) < 0) return -1;
    size_t span = df_item_span(klen);
    if (df_kd_arena_room(kd, span) < 0) return -1;
    size_t pos = kd->arena_len;
    df_item *it = (df_item *)(kd->arena + pos);
    it->seg = (uint16_t)seg;
    it->off = off;
    it->size = size;
    it->klen = (uint16_t)klen;
    memcpy(it->key, key, klen);
    kd->arena_len += span;
    size_t j = df_home(h, kd->nslots);
    while (kd->slots[j].ref)
        if (++j == kd->nslots) j = 0;
    kd->slots[j].hash = h;
    kd->slots[j].ref = (uint32_t)(pos >> 2) + 1;
    kd->count++;
    if (klen) kd->first[key[0]]++;
    return 0;
}

static void df_kd_unslot(df_keydir *kd, size_t i) {
    size_t n = kd->nslots, j = i;
    for (;;) {
        if (++j == n) j = 0;
        if (kd->slots[j].ref == 0) break;
        size_t home = df_home(kd->slots[j].hash, n);
        /* move j back into the hole at i unless its home lies cyclically in (i, j] */
        if ((j + n - home) % n >= (j + n - i) % n) {
            kd->slots[i] = kd->slots[j];
            i = j;
        }
    }
    kd->slots[i].ref = 0;
    kd->slots[i].hash = 0;
}

/* Remove. Returns 1 when it was there (old location in *old), 0 when absent. */
static int df_kd_remove(df_keydir *kd, const unsigned char *key, size_t klen, df_item *old) {
    uint32_t h = df_hash(key, klen);
    ptrdiff_t i = df_kd_slot(kd, key, klen, h);
    if (i < 0) return 0;
    df_item *it = (df_item *)(kd->arena + ((size_t)(kd->slots[i].ref - 1) << 2));
    old->seg = it->seg;
    old->off = it->off;
    old->size = it->size;
    it->seg = DF_DEAD;
    kd->arena_dead += df_item_span(it->klen);
    df_kd_unslot(kd, (size_t)i);
    kd->count--;
    if (klen) kd->first[key[0]]--;
    return 1;
}

/* Rebuild the arena without dead items (order kept) and the index over it. */
static int df_kd_compact(df_keydir *kd) {
    size_t live = kd->arena_len - kd->arena_dead, cap = 1 << 16;
    while (cap < live) cap += cap / 2;
    unsigned char *na = df_arena_new(cap);
    if (!na) return -1;
    memset(kd->slots, 0, kd->nslots * sizeof(df_slot));
    size_t out = 0;
    for (size_t pos = 0; pos < kd->arena_len;) {
        df_item *it = (df_item *)(kd->arena + pos);
        size_t span = df_item_span(it->klen);
        if (it->seg != DF_DEAD) {
            memcpy(na + out, it, span);
            uint32_t h = df_hash(it->key, it->klen);
            size_t j = df_home(h, kd->nslots);
            while (kd->slots[j].ref)
                if (++j == kd->nslots) j = 0;
            kd->slots[j].hash = h;
            kd->slots[j].ref = (uint32_t)(out >> 2) + 1;
            out += span;
        }
        pos += span;
    }
    df_arena_free(kd->arena, kd->arena_cap);
    kd->arena = na;
    kd->arena_cap = cap;
    kd->arena_len = out;
    kd->arena_dead = 0;
    return 0;
}

/* Position of the next live item at or after pos (below end) whose key starts with prefix, or end. */
static inline size_t df_kd_next(const df_keydir *kd, size_t pos, size_t end, const unsigned char *prefix,
                                size_t plen) {
    while (pos < end) {
        const df_item *it = (const df_item *)(kd->arena + pos);
        if (it->seg != DF_DEAD && it->klen >= plen && memcmp(it->key, prefix, plen) == 0) return pos;
        pos += df_item_span(it->klen);
    }
    return end;
}

#endif
