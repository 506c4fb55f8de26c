# The RESP request parser's state (the reference is dynafast._ref.resp).

cdef class Parser:
    cdef readonly Py_ssize_t max_bulk
    cdef readonly Py_ssize_t max_args
    cdef unsigned char *_buf  # the unparsed tail of earlier reads (none while reads hold whole requests)
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef list _args  # the arguments so far of a multibulk request under way, or None
    cdef Py_ssize_t _count  # arguments it still needs
    cdef Py_ssize_t _bulk  # the length of its next argument once that argument's header is read, else -1
    cdef Py_ssize_t _held  # bytes of it consumed already (its headers and whole arguments)

    cdef Py_ssize_t _parse(self, const unsigned char *buf, Py_ssize_t end, list out) except -1
    cdef int _keep(self, const unsigned char *data, Py_ssize_t n) except -1
