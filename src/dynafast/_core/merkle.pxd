# Merkle trees for anti-entropy: the contract other extensions cimport (see merkle.pyx).
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef enum:
    MERKLE_HASH_SIZE = 8
    MERKLE_MIN_LEAF_BITS = 4       # 16 leaves
    MERKLE_MAX_LEAF_BITS = 20      # 1,048,576 leaves
    MERKLE_MAX_FANOUT_BITS = 20
    MERKLE_MAX_LEVELS = 21         # depth <= MAX_LEAF_BITS (fanout >= 2), plus the root
    MERKLE_ITEM_SEED = 0x4D4B4931  # "MKI1"
    MERKLE_NODE_SEED = 0x4D4B4E31  # "MKN1"
    MERKLE_CHECK_SEED = 0x4D4B4331 # "MKC1"


# Hash of one (key, version digest) pair, MurmurHash3 x64_128 (murmur3.pxd): what a leaf sums.
cdef int merkle_item_hash(const unsigned char *key, Py_ssize_t klen,
                          const unsigned char *digest, Py_ssize_t dlen, uint64_t *out) except -1


cdef class MerkleTree:
    cdef readonly int leaves
    cdef readonly int fanout
    cdef readonly int depth
    cdef int leaf_bits
    cdef int fanout_bits
    cdef bint all_dirty                     # every internal level must be recomputed
    cdef Py_ssize_t size[MERKLE_MAX_LEVELS]     # nodes per level
    cdef Py_ssize_t offset[MERKLE_MAX_LEVELS]   # start of each level in nodes
    cdef Py_ssize_t ndirty[MERKLE_MAX_LEVELS]   # entries of each level's dirty stack
    cdef uint64_t *nodes                    # every level, root first, leaves last
    cdef uint8_t *dirty_flag                # one per internal node
    cdef uint32_t *dirty_stack              # per internal level, at the level's offset

    cdef Py_ssize_t c_leaf_of(self, const unsigned char *key, Py_ssize_t klen) noexcept nogil
    # sign +1 inserts the pair, -1 removes it; O(1), internal levels are marked dirty.
    cdef int c_add(self, const unsigned char *key, Py_ssize_t klen,
                   const unsigned char *digest, Py_ssize_t dlen, int sign) except -1
    cdef void _rehash(self, int d, Py_ssize_t i) noexcept nogil
    # Recompute the dirty internal nodes, bottom-up.
    cdef int c_flush(self) except -1
    cdef int c_check_depth(self, Py_ssize_t depth, Py_ssize_t high) except -1
    cdef int c_check_index(self, Py_ssize_t depth, Py_ssize_t index) except -1


cdef class TreeExchange:
    cdef MerkleTree local
    cdef int level                          # depth of the outstanding (or next) request
    cdef list pending                       # node indices at that depth
    cdef list finished                      # differing leaves once done, else None
    cdef bint issued
    cdef readonly Py_ssize_t bytes_sent
    cdef readonly Py_ssize_t bytes_received

    cdef int c_step_against(self, MerkleTree remote) except -1
    cdef int c_advance(self, list differing) except -1
