"""Stand-in for `dynafast.cli node` in harness tests: same arguments, same serving line, an echo server.

It records its arguments and environment in <data-dir>/fake_node.json, counts its starts in
<data-dir>/starts, and behaves badly on request through FAKE_NODE_MODE:
  exit-early  - print an error on stderr and exit 3 before serving
  silent      - never print the serving line
  ignore-term - ignore SIGTERM (so only SIGKILL stops it)
"""
import argparse
import asyncio
import json
import os
import signal
import sys


async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("verb", choices=["node"])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--seeds", default="")
    parser.add_argument("--config")
    for name in ("--n", "--r", "--w", "--partitions"):
        parser.add_argument(name, type=int)
    args, unknown = parser.parse_known_args()
    mode = os.environ.get("FAKE_NODE_MODE", "")

    with open(os.path.join(args.data_dir, "starts"), "a") as f:
        f.write("start\n")
    with open(os.path.join(args.data_dir, "fake_node.json"), "w") as f:
        json.dump({"args": vars(args), "unknown": unknown, "routes": os.environ.get("DYNAFAST_PEER_ROUTES")}, f)

    if mode == "exit-early":
        print(f"fake node {args.node_id}: refusing to start on purpose", file=sys.stderr)
        sys.exit(3)

    host, _, port = args.listen.rpartition(":")
    server = await asyncio.start_server(echo, host, int(port))  # EADDRINUSE propagates as a traceback
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    if mode != "silent":
        print(f"dynafast node {args.node_id} serving on {args.listen}", flush=True)
    print("fake node log line on stderr", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    print(f"fake node {args.node_id} stopped cleanly", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
