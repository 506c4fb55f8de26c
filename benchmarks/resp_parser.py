"""RESP request parsing: hiredis's C reader against the pure-Python parser, on what redis-benchmark sends.

    PYTHONPATH=src python3 benchmarks/resp_parser.py

Reads of 1 and 16 pipelined SET requests (100-byte values) and of 16 GETs, parsed over and over; prints the
time per request of each parser.
"""
import time

from dynafast.resp.protocol import HiredisParser, PythonParser


def frame(args) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def per_request(parser_class, data: bytes, requests: int, seconds: float = 1.0) -> float:
    parser = parser_class(8 << 20)
    rounds = 0
    start = time.perf_counter()
    while True:
        for _ in range(200):
            assert len(parser.feed(data)) == requests
        rounds += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / (rounds * requests)


def main() -> None:
    set_request = frame([b"SET", b"key:000000001234", b"x" * 100])
    get_request = frame([b"GET", b"key:000000001234"])
    cases = [("SET, pipeline 1", set_request, 1), ("SET, pipeline 16", set_request * 16, 16),
             ("GET, pipeline 16", get_request * 16, 16)]
    for name, data, requests in cases:
        fast = per_request(HiredisParser, data, requests)
        slow = per_request(PythonParser, data, requests)
        print(f"{name:18} hiredis {fast * 1e6:6.2f} us/request   python {slow * 1e6:6.2f} us/request   "
              f"({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()
