"""RESP request parsing: the compiled parser against hiredis's C reader and the plain-Python reference, on what
redis-benchmark sends.

    PYTHONPATH=src python3 benchmarks/resp_parser.py [--seconds 1] [--rounds 3]

Reads of 1 and 16 pipelined SET requests (100-byte values) and of 16 GETs, parsed over and over; prints the time
per request of each parser, the best of ``--rounds`` rounds taken in turns. hiredis is its reader alone (``feed``
then ``gets`` until it has nothing), without the checks the node needs around it: a lower bound of what it
would cost the node.
"""
import argparse
import time

from dynafast import _impl

try:
    import hiredis
except ImportError:  # pragma: no cover
    hiredis = None


def frame(args) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def hiredis_feed():
    reader = hiredis.Reader()

    def feed(data):
        reader.feed(data)
        out = []
        while True:
            request = reader.gets()
            if request is False:
                return out
            out.append(request)

    return feed


PARSERS = {
    "compiled": lambda: _impl.compiled("resp").Parser(8 << 20).feed,
    "hiredis": hiredis_feed,
    "python": lambda: _impl.reference("resp").Parser(8 << 20).feed,
}


def per_request(make, data: bytes, requests: int, seconds: float) -> float:
    feed = make()
    rounds = 0
    start = time.perf_counter()
    while True:
        for _ in range(200):
            assert len(feed(data)) == requests
        rounds += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / (rounds * requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = [name for name in PARSERS if name != "hiredis" or hiredis is not None]
    set_request = frame([b"SET", b"key:000000001234", b"x" * 100])
    get_request = frame([b"GET", b"key:000000001234"])
    cases = [("SET, pipeline 1", set_request, 1), ("SET, pipeline 16", set_request * 16, 16),
             ("GET, pipeline 16", get_request * 16, 16)]
    for case, data, requests in cases:
        best = {}
        for _ in range(args.rounds):
            for name in names:
                took = per_request(PARSERS[name], data, requests, args.seconds)
                best[name] = min(best.get(name, took), took)
        text = "   ".join(f"{name} {best[name] * 1e6:5.2f} us" for name in names)
        ratios = "   ".join(f"{name}/compiled {best[name] / best['compiled']:.1f}x" for name in names
                           if name != "compiled")
        print(f"{case:18} {text}   ({ratios})")


if __name__ == "__main__":
    main()
