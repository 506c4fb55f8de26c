"""The ``dynafast`` command line. It parses arguments and calls into dynafast.node and dynafast.client."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from dynafast import __version__
from dynafast.config import LOG_LEVELS
from dynafast.errors import DynafastError
from dynafast.playground import LocalNodes, request_restart


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    if parser.epilog:
        parser.epilog += ("\n\nThe node asked is --cluster, else $DYNAFAST_CLUSTER, else 127.0.0.1:7101; with "
                          "--user, the password comes from $DYNAFAST_PASSWORD or is asked for.")
    parser.add_argument("--cluster", default=os.environ.get("DYNAFAST_CLUSTER", "127.0.0.1:7101"),
                        help="HOST:PORT of one or more nodes, comma-separated (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="request timeout in seconds")
    parser.add_argument("--user", default=os.environ.get("DYNAFAST_USER"),
                        help="log in as this user (password from DYNAFAST_PASSWORD, or asked for)")
    parser.add_argument("--tls-ca", metavar="PEM", default=os.environ.get("DYNAFAST_TLS_CA") or None,
                        help="connect over TLS, checking the nodes' certificates against this CA "
                             "(default: $DYNAFAST_TLS_CA; none: plain TCP)")


def _defaults_from_env(parser: argparse.ArgumentParser) -> None:
    """Defaults of ``parser``'s flags from $DYNAFAST_<FLAG> (--node-id: DYNAFAST_NODE_ID): containers and service
    managers configure a node through its environment. Flags given on the command line still win. Not --tls-ca:
    DYNAFAST_TLS_CA is the CA client verbs check nodes against, set in shells that also start nodes."""
    if os.environ.get("DYNAFAST_FLAGS_FROM_ENV") == "0":
        return  # set by `dynafast local` and LocalCluster, which give every flag: a stray variable must not count
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "tls_ca"):
            continue
        value = os.environ.get("DYNAFAST_" + action.dest.upper())
        if value:  # argparse converts a string default with the flag's type; a switch takes 1/true/yes
            action.default = value.lower() in ("1", "true", "yes") if action.nargs == 0 else value


class _Help(argparse.HelpFormatter):
    """Paragraphs of a description or epilog are filled to the terminal; examples (indented lines) are kept."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(paragraph if "\n  " in paragraph else super(_Help, self)._fill_text(paragraph, width, indent)
                            for paragraph in text.split("\n\n"))


def _examples(*lines: str) -> str:
    """An epilog of example command lines for a verb's --help."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynafast", description="A Dynamo-style distributed key-value store.")
    parser.add_argument("--version", action="version", version=f"dynafast {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    node = verbs.add_parser("node", help="run a node", description="Run one node until SIGTERM or Ctrl-C.")
    node.add_argument("--listen", help="HOST:PORT to serve clients and peers on")
    node.add_argument("--advertise", help="HOST:PORT other nodes and clients use (default: --listen)")
    node.add_argument("--data-dir", help="directory of the node's data")
    node.add_argument("--seeds", help="HOST:PORT of nodes of the cluster to join, comma-separated")
    node.add_argument("--node-id", help="the node's id (default: derived from --listen); keep it across restarts")
    node.add_argument("--http", help="HOST:PORT for /health, /status, /metrics, the console and /kv")
    node.add_argument("--resp", help="HOST:PORT to serve the Redis protocol (RESP) on (docs/resp.md)")
    node.add_argument("--config", help="TOML file of node options (docs/configuration.md)")
    node.add_argument("--zone", help="the node's zone: replicas are spread over zones")
    node.add_argument("--n", type=int, help="replicas per key (default 3)")
    node.add_argument("--r", type=int, help="default read quorum (default 2)")
    node.add_argument("--w", type=int, help="default write quorum (default 2)")
    node.add_argument("--dw", type=int, help="default durable-write quorum (default 1)")
    node.add_argument("--partitions", type=int, help="ring partitions, a power of two (default 64)")
    node.add_argument("--sync", choices=["none", "interval", "always"], help="storage sync policy")
    node.add_argument("--secret-file", help="cluster secret: every node of the cluster has the same; peers prove "
                                            "it before any internal message (docs/security.md)")
    node.add_argument("--insecure", action="store_true", default=None,
                      help="allow listening beyond loopback with no secret and no users (anyone who reaches "
                           "the port may do anything)")
    node.add_argument("--users-file", metavar="PATH",
                      help="users file (dynafast user add): every request but /health then needs a user")
    node.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (needs --tls-key)")
    node.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    node.add_argument("--tls-ca", metavar="PEM", help="CA that peers' (and clients') certificates must verify against")
    node.add_argument("--log-level", choices=LOG_LEVELS, help="least severe log records written (default info)")
    node.add_argument("--log-format", choices=["text", "json"],
                      help="log lines as text, or one JSON object per line (default text)")
    node.epilog = ("Each flag not given (but --tls-ca) falls back on $DYNAFAST_<FLAG>: DYNAFAST_SEEDS, "
                   "DYNAFAST_NODE_ID, ...")
    _defaults_from_env(node)

    certs = verbs.add_parser("certs", help="write a development CA and node certificates",
                             description="Write a development CA (ca.pem, ca-key.pem), a certificate and key per "
                                         "node (NODE.pem, NODE-key.pem) and a client certificate into DIR. "
                                         "EC P-256 keys, written with mode 0600.")
    certs.add_argument("dir", metavar="DIR")
    certs.add_argument("--hosts", default="127.0.0.1,localhost",
                       help="host names and IP addresses the nodes are reached at, comma-separated: every node "
                            "certificate names them all (default: %(default)s)")
    certs.add_argument("--nodes", default="n1,n2,n3", help="node names, comma-separated (default: %(default)s)")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default: %(default)s)")
    certs.add_argument("--force", action="store_true", help="replace an existing CA in DIR")

    local = verbs.add_parser("local", help="run a local cluster of node processes",
                             description="Start a cluster of real node processes on 127.0.0.1; Ctrl-C stops it.")
    local.add_argument("--nodes", type=int, default=3, help="number of nodes (default %(default)s)")
    local.add_argument("--base-port", type=int, default=7101, help="port of the first node (default %(default)s)")
    local.add_argument("--http-base-port", type=int, default=8101,
                       help="HTTP port of the first node, 0 for none (default %(default)s)")
    local.add_argument("--resp-base-port", type=int, default=None,
                       help="RESP port of the first node (default: --base-port minus 1000; 0 for none)")
    local.add_argument("--data-dir", default="./dynafast-data", help="parent of the nodes' data directories")
    local.add_argument("--partitions", type=int, default=64)
    local.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: run until Ctrl-C)")
    local.add_argument("--users", action="store_true",
                       help="create an admin user (password printed once) and require a login from clients")

    put = verbs.add_parser("put", help="write a value", epilog=_examples(
        "dynafast put greeting hello",
        "dynafast put photo --file cat.jpg",
        "gzip -c log.txt | dynafast put log.gz -",
        "dynafast put greeting 'hello again' --context $(dynafast get greeting --json | jq -r .context)"),
        formatter_class=_Help)
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="the value; - reads it from stdin")
    put.add_argument("--file", metavar="PATH", help="read the value from this file")
    put.add_argument("--context", help="hex context from a get: the value replaces what that get saw (default: "
                     "last write wins, the value replaces every version the coordinator reads)")
    put.add_argument("--blind", action="store_true", help="write without a context: a concurrent sibling")
    put.add_argument("--w", type=int)
    put.add_argument("--dw", type=int)
    put.add_argument("--ttl", type=float, help="the value expires this many seconds after the write")
    _add_client_options(put)

    get = verbs.add_parser("get", help="read a key: prints each sibling on its own line",
                           epilog=_examples("dynafast get greeting", "dynafast get greeting --json",
                                            "DYNAFAST_CLUSTER=10.0.0.5:7101 dynafast get greeting --r 3"),
                           formatter_class=_Help)
    get.add_argument("key")
    get.add_argument("--r", type=int)
    get.add_argument("--json", action="store_true", help="print values and context as JSON")
    _add_client_options(get)

    delete = verbs.add_parser("delete", help="delete a key", epilog=_examples("dynafast delete greeting"),
                              formatter_class=_Help)
    delete.add_argument("key")
    delete.add_argument("--context", help="hex context from a get (default: delete every version the "
                        "coordinator reads)")
    delete.add_argument("--w", type=int)
    _add_client_options(delete)

    scan = verbs.add_parser("scan", help="every key starting with a prefix, one line per key and sibling",
                            description="Scan the cluster: each partition in key order, read from one replica of "
                            "it (r=1). Prints KEY<TAB>VALUE per sibling, or the keys alone.",
                            epilog=_examples("dynafast scan --prefix user: --keys-only",
                                             "dynafast scan --limit 100"),
                            formatter_class=_Help)
    scan.add_argument("--prefix", default="", help="only keys starting with this")
    scan.add_argument("--limit", type=int, help="at most this many keys")
    scan.add_argument("--keys-only", action="store_true", help="print the keys alone")
    scan.add_argument("--cursor", help="hex cursor printed by an earlier scan that stopped at --limit")
    _add_client_options(scan)

    status = verbs.add_parser("status", help="members, their state, and each node's keys, storage, hints, "
                              "anti-entropy, repair and transfers",
                              epilog=_examples("dynafast status", "dynafast status --cluster 10.0.0.5:7101 --json"),
                              formatter_class=_Help)
    status.add_argument("--json", action="store_true", help="the STATUS of the node asked, as JSON")
    _add_client_options(status)

    ring = verbs.add_parser("ring", help="ring ownership per node, with shares and balance",
                            description="How the ring's partitions are spread: partitions each node owns (is the "
                                        "first replica of) and replicas it holds, and how far the most loaded "
                                        "node is from an even share.",
                            epilog=_examples("dynafast ring", "dynafast ring --json | jq .balance"),
                            formatter_class=_Help)
    ring.add_argument("--json", action="store_true")
    _add_client_options(ring)

    preflist = verbs.add_parser("preflist", help="a key's partition and the nodes that hold it",
                                description="The key's partition, its primary replicas with their state, and "
                                            "the nodes a write goes to now (fallbacks stand in for down primaries).",
                                epilog=_examples("dynafast preflist user:42", "dynafast preflist user:42 --json"),
                                formatter_class=_Help)
    preflist.add_argument("key")
    preflist.add_argument("--json", action="store_true")
    _add_client_options(preflist)

    transfers = verbs.add_parser("transfers", help="partition transfers in progress (join, leave), per node",
                                 epilog=_examples("dynafast transfers", "dynafast transfers --watch",
                                                  "dynafast transfers --watch 600 --json > transfers.jsonl"),
                                 formatter_class=_Help)
    transfers.add_argument("--json", action="store_true")
    transfers.add_argument("--watch", type=float, nargs="?", const=3600.0, metavar="SECONDS",
                           help="refresh every second until no transfer is left, for at most SECONDS "
                                "(default 3600); exit status 1 if some are still left then")
    _add_client_options(transfers)

    config = verbs.add_parser("config", help="a node's effective settings",
                              description="The settings a node runs with (defaults, its config file and flags "
                                          "applied), as TOML; paths of secrets are left out.",
                              epilog=_examples("dynafast config", "dynafast config --node n2 --json"),
                              formatter_class=_Help)
    config.add_argument("--node", help="id of the node (default: the node --cluster names)")
    config.add_argument("--json", action="store_true")
    _add_client_options(config)

    compact = verbs.add_parser("compact", help="merge a node's store now, reclaiming the space of dead records",
                               description="Rewrite the node's log segments that hold overwritten or deleted "
                                           "records, whatever their dead ratio (nodes merge by themselves past "
                                           "it). Requests are served meanwhile. Needs the admin role.",
                               epilog=_examples("dynafast compact", "dynafast compact --node n2",
                                                "dynafast compact --all --json"),
                               formatter_class=_Help)
    which = compact.add_mutually_exclusive_group()
    which.add_argument("--node", help="id of the node (default: the node --cluster names)")
    which.add_argument("--all", action="store_true", help="every node, one after the other")
    compact.add_argument("--json", action="store_true")
    _add_client_options(compact)
    compact.set_defaults(timeout=600.0)  # a merge of a large store takes a while

    backup = verbs.add_parser("backup", help="copy every node's store into a directory, online",
                              description="Each node copies its store, consistently and without pausing writes, "
                                          "into DIR/<node id>/ (sealed segments hard-linked, the segment being "
                                          "written copied up to its synced length); then DIR/backup.json is "
                                          "written. DIR must be a path every node can write to and this command "
                                          "can read (the same path on each machine: a local cluster, or a shared "
                                          "mount). Needs the admin role. See docs/operations.md.",
                              epilog=_examples("dynafast backup /var/backups/dynafast/2026-12-02",
                                               "dynafast backup /mnt/shared/bk --json"),
                              formatter_class=_Help)
    backup.add_argument("dir", metavar="DIR", help="backup directory (absolute, or made so from here)")
    backup.add_argument("--json", action="store_true")
    _add_client_options(backup)
    backup.set_defaults(timeout=600.0)  # linking is quick; a copy across filesystems takes a while

    restore = verbs.add_parser("restore", help="write a backup into a running new cluster of any size",
                               description="Read every node's copy in DIR offline, merge the versions of each key "
                                           "by their vector clocks (siblings kept, deletes honoured), and write "
                                           "each key with its clock to its replicas in the cluster. Needs the "
                                           "admin role. See docs/operations.md.",
                               epilog=_examples("dynafast restore /var/backups/dynafast/2026-12-02 "
                                                "--cluster 10.0.0.9:7101",
                                                "dynafast restore /mnt/shared/bk --json"),
                               formatter_class=_Help)
    restore.add_argument("dir", metavar="DIR", help="a directory dynafast backup wrote")
    restore.add_argument("--in-flight", type=int, default=8, help="batches sent and not yet acknowledged, at most")
    restore.add_argument("--json", action="store_true", help="print a summary as JSON")
    _add_client_options(restore)
    restore.set_defaults(timeout=60.0)

    repair = verbs.add_parser("repair", help="exchange partitions with their other replicas now, with progress",
                              description="Start anti-entropy now: each partition asked for is compared with its "
                                          "other replicas (Merkle trees) and the keys that differ are repaired on "
                                          "both sides. --node alone: every partition that node holds; --partition "
                                          "alone: that partition, from its first replica that is up; neither: "
                                          "every partition, each from its owner. Shows a progress bar until done "
                                          "(including a wiped node's own repair). Needs the admin role.",
                              epilog=_examples("dynafast repair --node n3", "dynafast repair --partition 17",
                                               "dynafast repair --json"),
                              formatter_class=_Help)
    repair.add_argument("--node", help="id of the node to repair")
    repair.add_argument("--partition", type=int, help="the partition to repair")
    repair.add_argument("--wait", type=float, default=600.0,
                        help="seconds to wait for the repair to finish (0: do not wait)")
    repair.add_argument("--json", action="store_true", help="print each node's repair figures as JSON at the end")
    _add_client_options(repair)

    restart = verbs.add_parser("node-restart", help="restart a node of a running dynafast local",
                               description="Ask the dynafast local whose data is in --data-dir to restart one of "
                                           "its nodes (stopped or not); it is supervised again by that "
                                           "dynafast local, whose Ctrl-C stops it with the others.",
                               epilog=_examples("dynafast node-restart n3",
                                                "dynafast node-restart n2 --data-dir /tmp/play"),
                               formatter_class=_Help)
    restart.add_argument("node", metavar="NODE", help="node id, as dynafast local printed it (n1, n2, ...)")
    restart.add_argument("--data-dir", default="./dynafast-data",
                         help="the data directory dynafast local was given (default %(default)s)")
    restart.add_argument("--wait", type=float, default=60.0,
                         help="seconds to wait for the node to serve (default %(default)s)")

    leave = verbs.add_parser("leave", help="decommission a node: hand its partitions off, then it stops",
                             description="Ask the cluster to move the node's partitions to the others; the "
                                         "node stops once it has handed everything off. Shows the partition "
                                         "transfers done until the node has left.",
                             epilog=_examples("dynafast leave --node n3", "dynafast leave --node n3 --wait 0"),
                             formatter_class=_Help)
    leave.add_argument("--node", help="id of the node that leaves (default: the node --cluster names)")
    leave.add_argument("--wait", type=float, default=3600.0,
                       help="show progress until the node has left, for at most this many seconds (default "
                            "%(default)s; 0: do not wait); exit status 1 if it has not left by then")
    _add_client_options(leave)

    user = verbs.add_parser(
        "user", help="add, remove or list the users of a users file",
        description="Manage the users file that nodes started with --users-file check credentials against.\n"
                    "Running nodes see a change at their next check, without a restart.",
        epilog="examples:\n"
               "  dynafast user add alice --role admin --users-file /etc/dynafast/users.json\n"
               "  DYNAFAST_PASSWORD=s3cret dynafast user add grafana --role read --users-file users.json\n"
               "  dynafast user list --users-file users.json\n"
               "  dynafast user remove alice --users-file users.json\n"
               "\nThe password comes from DYNAFAST_PASSWORD, or else is asked for twice. Roles, each allowed\n"
               "what the one before is: read, readwrite, admin (docs/security.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    user_verbs = user.add_subparsers(dest="user_verb", metavar="ACTION")
    user_verbs.required = True
    user_add = user_verbs.add_parser("add", help="add a user, or change a user's password and role")
    user_add.add_argument("name")
    user_add.add_argument("--role", required=True, choices=["read", "readwrite", "admin"])  # security.users.ROLES
    user_remove = user_verbs.add_parser("remove", help="remove a user")
    user_remove.add_argument("name")
    user_list = user_verbs.add_parser("list", help="list users and their roles")
    for sub in (user_add, user_remove, user_list):
        sub.add_argument("--users-file", metavar="PATH", required=True, help="the users file")

    # The load tool parses its own options (main hands them over), so that its package, and the histogram
    # and array libraries it needs, are imported only when it runs.
    verbs.add_parser("bench", help="closed-loop YCSB-style load against a cluster", add_help=False)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.verb == "bench":
        args.options = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return VERBS[args.verb](args)
    except KeyboardInterrupt:
        return 130
    except (DynafastError, ValueError, OSError) as exc:
        print(f"dynafast {args.verb}: error: {exc}", file=sys.stderr)
        return 1


def cmd_node(args) -> int:
    from dynafast.config import NodeConfig
    from dynafast.node import run_node

    overrides = {
        "listen": args.listen,
        "advertise": args.advertise,
        "data_dir": args.data_dir,
        "seeds": [s.strip() for s in args.seeds.split(",") if s.strip()] if args.seeds else None,
        "node_id": args.node_id,
        "http": args.http,
        "resp": args.resp,
        "zone": args.zone,
        "n": args.n,
        "r": args.r,
        "w": args.w,
        "dw": args.dw,
        "partitions": args.partitions,
        "sync": args.sync,
        "secret_file": args.secret_file,
        "insecure": args.insecure,
        "users_file": args.users_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_ca": args.tls_ca,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    config = NodeConfig.load(args.config, **overrides)
    return run_node(config)


def cmd_local(args) -> int:
    if args.nodes < 1:
        raise ValueError("--nodes must be at least 1")
    base = Path(args.data_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    seed = f"127.0.0.1:{args.base_port}"
    security = _local_security(base, args.users)
    resp_base = args.base_port - 1000 if args.resp_base_port is None else args.resp_base_port

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both stop the cluster (a shell may have started us with SIGINT ignored).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    # A node that exits is reported and stays down until `dynafast node-restart` asks for it back.
    nodes = LocalNodes(base)
    try:
        for i in range(args.nodes):
            node_id = f"n{i + 1}"
            address = f"127.0.0.1:{args.base_port + i}"
            cmd = [sys.executable, "-m", "dynafast.cli", "node", "--node-id", node_id, "--listen", address,
                   "--data-dir", str(base / node_id), "--partitions", str(args.partitions),
                   "--n", str(min(3, args.nodes)), "--r", str(min(2, args.nodes)), "--w", str(min(2, args.nodes))]
            if args.http_base_port:
                cmd += ["--http", f"127.0.0.1:{args.http_base_port + i}"]
            if resp_base:
                cmd += ["--resp", f"127.0.0.1:{resp_base + i}"]
            cmd += security.node_args
            if i > 0:
                cmd += ["--seeds", seed]
            nodes.start(node_id, address, cmd)
        _wait_settled(seed, len(nodes.nodes), security.login)
        print(f"dynafast local cluster: {len(nodes.nodes)} nodes, data in {base} (kept between runs: to start "
              f"afresh, stop this and delete that directory)")
        for i, node in enumerate(nodes.nodes.values()):
            http = f"  console http://127.0.0.1:{args.http_base_port + i}/" if args.http_base_port else ""
            resp = f"  redis 127.0.0.1:{resp_base + i}" if resp_base else ""
            print(f"  {node.node_id}  {node.address}  pid {node.proc.pid}{http}{resp}")
        print(f"nodes prove the cluster secret in {security.secret_file} to each other")
        user = ""
        if security.login:
            print(f"clients log in: user admin, password {security.login['password']} (once; more users: "
                  f"dynafast user add NAME --role read|readwrite|admin --users-file {security.users_file})")
            print(f"      export DYNAFAST_PASSWORD='{security.login['password']}'")
            user = " --user admin"
        data_dir = "" if base == Path("./dynafast-data").resolve() else f" --data-dir {base}"
        print(f"try:  dynafast put hello world --cluster {seed}{user}")
        print(f"      dynafast get hello --cluster {seed}{user}")
        print(f"      dynafast status --cluster {seed}{user}")
        print("a node that stops is reported here; the others go on. kill -9 one, then bring it back with:")
        print(f"      dynafast node-restart n{len(nodes.nodes)}{data_dir}")
        print("Ctrl-C stops the cluster.", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            nodes.watch()
            time.sleep(0.2)
        return 0
    except KeyboardInterrupt:
        print("\nstopping the cluster", flush=True)
        return 0
    finally:
        nodes.stop_all()


class _LocalSecurity:
    """What ``dynafast local`` secures its nodes with: a cluster secret, and users when asked."""

    def __init__(self, secret_file: Path, users_file: Path | None, login: dict | None):
        self.secret_file = secret_file
        self.users_file = users_file
        self.login = login or {}
        self.node_args = ["--secret-file", str(secret_file)]
        if users_file is not None:
            self.node_args += ["--users-file", str(users_file)]


def _local_security(base: Path, users: bool) -> _LocalSecurity:
    # The nodes of a local cluster authenticate each other like any other: a secret kept with their data.
    from dynafast.security.access import write_secret

    secret_file = base / "secret"
    if not secret_file.exists():
        write_secret(secret_file)
    if not users:
        return _LocalSecurity(secret_file, None, None)
    import secrets

    from dynafast.security.users import Users

    users_file = base / "users.json"
    password = secrets.token_urlsafe(12)
    Users(users_file, must_exist=False).add("admin", password, "admin")
    return _LocalSecurity(secret_file, users_file, {"username": "admin", "password": password})


def _wait_settled(address: str, members: int, login: dict | None = None, timeout: float = 60.0) -> None:
    """Wait until every node has joined and the ring that includes them all is active."""
    from dynafast.client import Client

    deadline = time.monotonic() + timeout
    with Client([address], timeout=2.0, **(login or {})) as client:
        while time.monotonic() < deadline:
            try:
                status = client.status(address)
                if (len(status["members"]) == members and status.get("next_ring_version") is None
                        and all(m["state"] == "up" for m in status["members"])):
                    return
            except DynafastError:
                pass
            time.sleep(0.2)
    raise DynafastError(f"the cluster did not settle within {timeout:.0f}s")


def cmd_certs(args) -> int:
    from dynafast.security.certs import write_dev_certs

    def items(text):
        return [item.strip() for item in text.split(",") if item.strip()]

    for path in write_dev_certs(args.dir, hosts=items(args.hosts), nodes=items(args.nodes), days=args.days,
                                force=args.force):
        print(path)
    return 0


def _password(user: str) -> str:
    password = os.environ.get("DYNAFAST_PASSWORD")
    if password is None:
        import getpass

        password = getpass.getpass(f"password for {user}: ")
    return password


def _client(args):
    from dynafast.client import Client

    credentials = {}
    if args.user:
        credentials = {"username": args.user, "password": _password(args.user)}
    tls = None
    if args.tls_ca:
        from dynafast.security.tls import client_context

        tls = client_context(args.tls_ca)
    return Client(args.cluster.split(","), timeout=args.timeout, tls=tls, **credentials)


def cmd_put(args) -> int:
    value = _value(args)
    context = _context(args.context)
    with _client(args) as client:
        lww = context is None and not args.blind
        client.put(args.key.encode(), value, context=context, w=args.w, dw=args.dw, lww=lww, ttl=args.ttl)
    return 0


def _value(args) -> bytes:
    """The value of ``put``: the argument, stdin (``-``) or --file, exactly one of them."""
    if args.file is not None:
        if args.value is not None:
            raise ValueError("give the value or --file, not both")
        with open(args.file, "rb") as f:
            return f.read()
    if args.value is None:
        raise ValueError("give a value, - to read it from stdin, or --file PATH")
    if args.value == "-":
        return sys.stdin.buffer.read()
    return args.value.encode()


def _context(text: str | None) -> bytes | None:
    """A --context argument as bytes; a clear error for anything that is not the hex a get printed."""
    if not text:
        return None
    try:
        context = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"--context {text!r} is not a context: give the hex string dynafast get --json "
                         "printed as \"context\"") from None
    from dynafast import _impl

    try:
        _impl.vclock.VClock.from_bytes(context)
    except Exception:  # noqa: BLE001 - whatever the decoder says of bytes that are no context
        raise ValueError(f"--context {text!r} is not a context dynafast get printed (it does not decode)") from None
    return context


def cmd_get(args) -> int:
    with _client(args) as client:
        result = client.get(args.key.encode(), r=args.r)
    if args.json:
        print(json.dumps({
            "values": [v.decode(errors="backslashreplace") for v in result.values],
            "context": result.context.hex(),
        }))
        return 0
    if not result.values:
        print(f"dynafast get: {args.key}: not found", file=sys.stderr)
        return 1
    for value in result.values:
        sys.stdout.write(value.decode(errors="backslashreplace") + "\n")
    if len(result.values) > 1:
        print(f"({len(result.values)} siblings; context {result.context.hex()})", file=sys.stderr)
    return 0


def cmd_delete(args) -> int:
    context = _context(args.context)
    with _client(args) as client:
        client.delete(args.key.encode(), context=context, w=args.w)
    return 0


def cmd_scan(args) -> int:
    out = sys.stdout
    with _client(args) as client:
        cursor = bytes.fromhex(args.cursor) if args.cursor else None
        scan = client.scan(prefix=args.prefix.encode(), limit=args.limit, cursor=cursor)
        for key, result in scan:
            shown = key.decode(errors="backslashreplace")
            if args.keys_only:
                out.write(shown + "\n")
                continue
            for value in result.values:
                out.write(f"{shown}\t{value.decode(errors='backslashreplace')}\n")
        if scan.cursor is not None:
            print(f"(more: --cursor {scan.cursor.hex()})", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    from dynafast import admin

    with _client(args) as client:
        status = client.status()
        if args.json:
            print(json.dumps(status, indent=2))
            return 0
        statuses = admin.node_statuses(client, status)
    print(admin.format_status(status, statuses))
    return 0


def _ring(client, args):
    """(the ring, the STATUS) of the node --cluster names."""
    from dynafast.net.messages import Msg

    address = args.cluster.split(",")[0]
    status = client.status(address)
    ring = client._call(address, Msg.RING_GET, (), args.timeout)[0]
    return ring, status


def cmd_ring(args) -> int:
    from dynafast import admin

    with _client(args) as client:
        report = admin.ring_report(*_ring(client, args))
    print(json.dumps(report, indent=2) if args.json else admin.format_ring(report))
    return 0


def cmd_preflist(args) -> int:
    from dynafast import admin

    with _client(args) as client:
        ring, status = _ring(client, args)
    report = admin.preflist_report(ring, status, args.key.encode())
    print(json.dumps(report, indent=2) if args.json else admin.format_preflist(report))
    return 0


def cmd_transfers(args) -> int:
    from dynafast import admin

    with _client(args) as client:
        def fetch():
            status = client.status(args.cluster.split(",")[0])
            return admin.transfers_report(status, admin.node_statuses(client, status))

        if args.watch is not None:
            from dynafast.watch import watch_transfers

            if watch_transfers(fetch, admin.format_transfers, args.watch, as_json=args.json):
                return 0
            print(f"dynafast transfers: transfers still left after {args.watch:g}s", file=sys.stderr)
            return 1
        report = fetch()
    print(json.dumps(report, indent=2) if args.json else admin.format_transfers(report))
    return 0


def _node_address(client, args, node_id: str | None) -> str:
    """The address of ``node_id`` as the cluster knows it, or of the node --cluster names."""
    address = args.cluster.split(",")[0]
    if not node_id:
        return address
    members = {m["id"]: m for m in client.status(address)["members"]}
    if node_id not in members:
        raise ValueError(f"no node {node_id!r} in the cluster (members: {', '.join(members)})")
    return members[node_id]["address"]


def cmd_config(args) -> int:
    from dynafast import admin

    with _client(args) as client:
        status = client.status(_node_address(client, args, args.node))
    if "config" not in status:
        raise DynafastError(f"node {status['node']} does not publish its settings (an older version)")
    if args.json:
        print(json.dumps(status["config"], indent=2))
    else:
        print(admin.format_config(status["node"], status["config"]))
    return 0


def cmd_compact(args) -> int:
    from dynafast import admin
    from dynafast.net.messages import Compact, Msg

    results = []
    with _client(args) as client:
        if args.all:
            members = client.status(args.cluster.split(",")[0])["members"]
            targets = [(m["id"], m["address"]) for m in members if m["state"] == "up"]
        else:
            address = _node_address(client, args, args.node)
            targets = [(args.node or client.status(address)["node"], address)]
        for node_id, address in targets:
            reply = client._call(address, Msg.COMPACT, Compact(), args.timeout)
            results.append({"node": node_id, **reply._asdict()})
            if not args.json:
                print(f"{node_id}: {reply.segments_merged} segments merged, "
                      f"{admin.human_bytes(reply.disk_bytes_before)} -> {admin.human_bytes(reply.disk_bytes_after)}",
                      flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_backup(args) -> int:
    from dynafast import admin
    from dynafast.backup import backup_cluster

    def report(node):
        if not args.json:
            print(f"{node['id']}: {node['keys']:,} keys, {node['segments']} segments, "
                  f"{admin.human_bytes(node['bytes'])} ({admin.human_bytes(node['linked_bytes'])} hard-linked) "
                  f"in {node['directory']}", flush=True)

    with _client(args) as client:
        manifest = backup_cluster(client, args.dir, timeout=args.timeout, on_node=report)
    if args.json:
        print(json.dumps({k: v for k, v in manifest.items() if k != "ring"}, indent=2))
    else:
        print(f"backup of {len(manifest['nodes'])} nodes in {os.path.abspath(args.dir)}"
              + (f" (skipped, down: {', '.join(manifest['skipped'])})" if manifest["skipped"] else ""))
    return 0


def cmd_restore(args) -> int:
    from dynafast.progress import Progress
    from dynafast.restore import restore

    bar = Progress("restore", 0, "keys")

    def read(node, records):
        print(f"read {records:,} records of {node}", file=sys.stderr, flush=True)

    with _client(args) as client:
        summary = restore(client, args.dir, timeout=args.timeout, in_flight=max(1, args.in_flight), on_read=read,
                          progress=lambda done, total: bar.update(done, total))
    bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"restored {summary['written']:,} keys ({summary['with_siblings']:,} with siblings; "
              f"{summary['deleted']:,} deleted keys left out) in {summary['seconds']:.1f}s")
    return 0


def cmd_repair(args) -> int:
    from dynafast.progress import Progress
    from dynafast.repair import RepairRun, targets

    with _client(args) as client:
        ring, status = _ring(client, args)
        run = RepairRun(client, {m["id"]: m["address"] for m in status["members"]},
                        targets(ring, status, args.node, args.partition), args.timeout)
        run.start()
        for node, count in run.queued.items():
            print(f"{node}: {count} partitions queued", file=sys.stderr, flush=True)
        bar = Progress("repair", 0, "vnodes")
        figures = run.follow(args.wait, lambda done, total: bar.update(done, total))
        bar.close()
    left = run.left(figures)
    if args.json:
        print(json.dumps({"pending": left, "nodes": figures}, indent=2))
    if left:
        print(f"dynafast repair: {left} vnodes still to repair after {args.wait}s", file=sys.stderr)
        return 1 if args.wait else 0
    if not args.json:
        print("repair done: " + ", ".join(f"{node}: {count:,} keys repaired"
                                          for node, count in run.repaired(figures).items()))
    return 0


def cmd_node_restart(args) -> int:
    print(request_restart(Path(args.data_dir).resolve(), args.node, args.wait))
    return 0


def cmd_leave(args) -> int:
    with _client(args) as client:
        address = args.cluster.split(",")[0]
        status = client.status(address)
        node_id = args.node or status["node"]
        members = {m["id"]: m["address"] for m in status["members"]}
        client.leave(node_id, address=address)
        print(f"{node_id} is leaving: its partitions are handed off, then it stops", flush=True)
        if args.wait:
            from dynafast.watch import watch_leave

            # Progress comes from the others: the leaver stops once it has left.
            others = [a for i, a in sorted(members.items()) if i != node_id]
            if watch_leave(client, node_id, members.get(node_id, address), others, args.wait):
                return 0
            print(f"dynafast leave: {node_id} has not left after {args.wait:g}s (dynafast transfers --watch "
                  "follows it)", file=sys.stderr)
            return 1
    return 0


def cmd_user(args) -> int:
    from dynafast.security.users import Users

    users = Users(args.users_file, must_exist=args.user_verb != "add")
    if args.user_verb == "add":
        users.add(args.name, _new_password(), args.role)
        print(f"user {args.name} ({args.role}) saved in {args.users_file}")
    elif args.user_verb == "remove":
        if not users.remove(args.name):
            print(f"dynafast user remove: no user {args.name!r} in {args.users_file}", file=sys.stderr)
            return 1
        print(f"user {args.name} removed from {args.users_file}")
    else:
        for name, role in users.list():
            print(f"{name}\t{role}")
    return 0


def _new_password() -> str:
    password = os.environ.get("DYNAFAST_PASSWORD")
    if password:
        return password
    import getpass

    password = getpass.getpass("password: ")
    if getpass.getpass("password again: ") != password:
        raise ValueError("the two passwords differ")
    return password


def cmd_bench(args) -> int:
    try:
        from dynafast.bench import runner
    except ImportError as exc:
        if (exc.name or "").startswith("dynafast"):
            raise  # a bug in the package, not a missing extra
        print(f"dynafast bench: the load tool's dependencies are missing (no module {exc.name!r}): "
              "pip install 'dynafast[bench]'", file=sys.stderr)
        return 1
    return runner.main(args.options)


VERBS = {
    "node": cmd_node,
    "local": cmd_local,
    "put": cmd_put,
    "get": cmd_get,
    "delete": cmd_delete,
    "status": cmd_status,
    "scan": cmd_scan,
    "leave": cmd_leave,
    "user": cmd_user,
    "bench": cmd_bench,
    "certs": cmd_certs,
    "ring": cmd_ring,
    "preflist": cmd_preflist,
    "transfers": cmd_transfers,
    "config": cmd_config,
    "compact": cmd_compact,
    "backup": cmd_backup,
    "restore": cmd_restore,
    "repair": cmd_repair,
    "node-restart": cmd_node_restart,
}

if __name__ == "__main__":
    sys.exit(main())
