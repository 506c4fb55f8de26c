"""asv: wire protocol codec, compiled vs reference (the same messages as benchmarks/test_bench_codec.py)."""
from dynafast import _impl

GET_REPLY = ([b"v" * 100, b"w" * 100, b"x" * 100], b"c" * 40)  # 3 sibling values + a 40-byte context
PUT_REQUEST = (b"user:0000000042", b"v" * 100, b"c" * 40, 2, 1, 1.0)  # key, value, context, w, dw, timeout
MESSAGES = {"get_reply": (11, GET_REPLY), "put": (12, PUT_REQUEST)}


def _module(build):
    return _impl.compiled("codec") if build == "compiled" else _impl.reference("codec")


class Codec:
    params = (["compiled", "reference"], list(MESSAGES))
    param_names = ["build", "message"]

    def setup(self, build, message):
        try:
            self.codec = _module(build)
        except ImportError:
            raise NotImplementedError("codec extension not built")  # asv skips the benchmark
        self.msg_type, self.fields = MESSAGES[message]
        self.frame = self.codec.encode(self.msg_type, 1, self.fields)
        self.decoder = self.codec.Decoder()

    def time_encode(self, build, message):
        self.codec.encode(self.msg_type, 1, self.fields)

    def time_encode_into(self, build, message):
        self.codec.encode_into(bytearray(), self.msg_type, 1, self.fields)

    def time_decode(self, build, message):
        self.decoder.feed(self.frame)

    def track_frame_bytes(self, build, message):
        return len(self.frame)

    track_frame_bytes.unit = "bytes"


class DecodeStream:
    """100 get replies arriving in 1460-byte TCP-sized chunks: the buffered (split frame) path."""

    params = ["compiled", "reference"]
    param_names = ["build"]

    def setup(self, build):
        try:
            codec = _module(build)
        except ImportError:
            raise NotImplementedError("codec extension not built")
        self.codec = codec
        stream = b"".join(codec.encode(11, i, GET_REPLY) for i in range(100))
        self.chunks = [stream[i:i + 1460] for i in range(0, len(stream), 1460)]

    def time_decode_stream(self, build):
        decoder = self.codec.Decoder()
        for chunk in self.chunks:
            decoder.feed(chunk)
