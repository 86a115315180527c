"""``python -m wecom_sync.simulator``: a standalone fake WeCom, and a CLI for its control API.

    python -m wecom_sync.simulator --port 8900 --users 200 --departments 20 --seed 1
    python -m wecom_sync.simulator set-callback http://127.0.0.1:8000/wecom/callback/acme/
    python -m wecom_sync.simulator add-user zhangsan --name 张三 --department 1

The control subcommands talk to ``--simulator`` (default ``$WECOM_SIMULATOR_URL`` or http://127.0.0.1:8900).
See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_PORT = 8900
COMMANDS = ("serve", "info", "set-callback", "add-user", "update-user", "move-user", "disable-user", "enable-user",
            "remove-user", "add-department", "update-department", "move-department", "remove-department")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fields(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key] = _value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the serve command and of the control subcommands."""
    parser = argparse.ArgumentParser(prog="python -m wecom_sync.simulator",
                                     description="A standalone WeCom (企业微信) simulator and its control CLI.")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the simulator (the default command)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    serve.add_argument("--users", type=int, default=100, help="members in the generated directory")
    serve.add_argument("--departments", type=int, default=10, help="departments, the root included")
    serve.add_argument("--seed", type=int, default=0, help="seed of the directory and of the credentials")
    serve.add_argument("--agent-id", type=int, default=1000002, help="AgentId of the app")
    serve.add_argument("--callback-url", default="", help="deliver change events to this URL from the start")

    def control(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--simulator", default=os.environ.get("WECOM_SIMULATOR_URL", f"http://127.0.0.1:{DEFAULT_PORT}"),
                         help="the running simulator (default $WECOM_SIMULATOR_URL or http://127.0.0.1:8900)")
        return cmd

    control("info", "print the credentials and the callback target as JSON")
    cmd = control("set-callback", "deliver later changes to this callback URL")
    cmd.add_argument("url")
    cmd.add_argument("--token", default=None)
    cmd.add_argument("--encoding-aes-key", default=None)
    cmd = control("add-user", "add a member")
    cmd.add_argument("userid")
    cmd.add_argument("--name", required=True)
    cmd.add_argument("--department", type=int, action="append", help="a department id (repeat for several)")
    cmd.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="another field")
    cmd = control("update-user", "change a member's fields")
    cmd.add_argument("userid")
    cmd.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", required=True)
    cmd = control("move-user", "move a member to other departments")
    cmd.add_argument("userid")
    cmd.add_argument("--department", type=int, action="append", required=True)
    cmd.add_argument("--main-department", type=int, default=None)
    for name, text in (("disable-user", "disable a member"), ("enable-user", "enable a member again"),
                       ("remove-user", "delete a member")):
        control(name, text).add_argument("userid")
    cmd = control("add-department", "add a department")
    cmd.add_argument("--name", required=True)
    cmd.add_argument("--id", type=int, default=None)
    cmd.add_argument("--parent", type=int, default=1)
    cmd = control("update-department", "change a department's fields")
    cmd.add_argument("id", type=int)
    cmd.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", required=True)
    cmd = control("move-department", "move a department under another parent")
    cmd.add_argument("id", type=int)
    cmd.add_argument("--parent", type=int, required=True)
    control("remove-department", "delete an empty department").add_argument("id", type=int)
    return parser


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any] | None]:
    """Return (control path, JSON body or None for GET) for a control subcommand."""
    c = args.command
    if c == "info":
        return "info", None
    if c == "set-callback":
        return "callback", {"url": args.url, "token": args.token, "encoding_aes_key": args.encoding_aes_key}
    if c == "add-user":
        return "users", {"userid": args.userid, "name": args.name, "department": args.department or [1],
                         **_fields(args.set)}
    if c == "update-user":
        return f"users/{args.userid}/update", _fields(args.set)
    if c == "move-user":
        return f"users/{args.userid}/move", {"department": args.department, "main_department": args.main_department}
    if c in ("disable-user", "enable-user", "remove-user"):
        action = {"disable-user": "disable", "enable-user": "enable", "remove-user": "delete"}[c]
        return f"users/{args.userid}/{action}", {}
    if c == "add-department":
        body: dict[str, Any] = {"name": args.name, "parentid": args.parent}
        if args.id is not None:
            body["id"] = args.id
        return "departments", body
    if c == "update-department":
        return f"departments/{args.id}/update", _fields(args.set)
    if c == "move-department":
        return f"departments/{args.id}/move", {"parentid": args.parent}
    return f"departments/{args.id}/delete", {}


def run_control(args: argparse.Namespace) -> int:
    """Send one control request, print the answer as JSON; exit status 1 on a non-zero errcode."""
    import requests

    path, body = _request(args)
    url = args.simulator.rstrip("/") + "/control/" + path
    try:
        response = requests.get(url, timeout=30) if body is None else requests.post(url, json=body, timeout=30)
        answer = response.json()
    except (requests.RequestException, ValueError) as exc:
        print(f"The simulator at {args.simulator} did not answer: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0 if answer.get("errcode") == 0 else 1


def serve(args: argparse.Namespace) -> int:
    """Run the simulator until Ctrl+C (or SIGTERM), after printing what a sync source needs."""
    import signal

    from .control import StandaloneSimulator, credentials_from_seed
    from .org import generate_organisation

    creds = credentials_from_seed(args.seed)
    org = generate_organisation(users=args.users, departments=args.departments, seed=args.seed)
    sim = StandaloneSimulator(org, corp_id=creds["corp_id"], app_secret=creds["app_secret"],
                              contact_sync_secret=creds["contact_sync_secret"], agent_id=args.agent_id,
                              token=creds["token"], encoding_aes_key=creds["encoding_aes_key"])
    try:
        sim.start(args.host, args.port)
    except OSError as exc:
        print(f"Cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    if args.callback_url:
        sim.set_callback(args.callback_url)
    info = sim.info()
    lines = [
        f"WeCom simulator on {sim.base_url} ({info['users']} members, {info['departments']} departments)",
        "",
        f"  API base URL          {sim.base_url}",
        f"  Corp ID (企业ID)       {info['corp_id']}",
        f"  AgentId               {info['agent_id']}",
        f"  Secret (app)          {info['app_secret']}",
        f"  Contact-sync Secret   {info['contact_sync_secret']}",
        f"  Token                 {info['token']}",
        f"  EncodingAESKey        {info['encoding_aes_key']}",
        f"  Callback URL          {info['callback_url'] or '(none yet: set-callback URL)'}",
        "",
        f"Control API: {sim.base_url}/control/  (python -m wecom_sync.simulator --help). Ctrl+C stops.",
    ]
    print("\n".join(lines), flush=True)

    def stop(*_args: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the serve command by default, a control subcommand when one is named."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    return serve(args) if args.command == "serve" else run_control(args)


if __name__ == "__main__":
    sys.exit(main())
