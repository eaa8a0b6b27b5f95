#!/usr/bin/env python3
"""A test provider for the `exec` protocol.

Reads the JSON request on stdin and appends it, with the outcome, to the file named by
parameters.log (one JSON object per line). Behaviour is steered by files next to the log:
  <log>.fail        holds "N CODE": fail the next N calls with exit CODE (75 = retry later)
  <log>.sleep       holds seconds to sleep before answering
  <log>.hang        present: a grant acts (it is logged), starts a grandchild, records both
                    pids in <log>.pids, and then hangs far past any timeout
  <log>.hang_extend the same for an extension
Grants print a handle (shared per person and resource when parameters.shared is true; one
handle for everyone when parameters.team is true), a fresh secret credential, and instructions.
parameters.big_credentials = N adds a KUBECONFIG credential of
N characters (a realistic multi-line kubeconfig whose client key holds the secret), and
parameters.long_token = N a TOKEN of N characters on one line.
"""
import json
import os
import secrets
import subprocess
import sys
import time

request = json.load(sys.stdin)
params = request.get("parameters") or {}
log = params["log"]

sleep_file = log + ".sleep"
if os.path.exists(sleep_file):
    time.sleep(float(open(sleep_file).read().strip() or "0"))

fail_file = log + ".fail"
if os.path.exists(fail_file):
    parts = open(fail_file).read().split()
    remaining, code = int(parts[0]), int(parts[1]) if len(parts) > 1 else 1
    if remaining > 0:
        with open(fail_file, "w") as f:
            f.write(f"{remaining - 1} {code}")
        with open(log, "a") as f:
            f.write(json.dumps({"action": request["action"], "request_id": request["request_id"], "failed": code}) + "\n")
        print(f"simulated failure of {request['action']} (exit {code})", file=sys.stderr)
        sys.exit(code)

entry = {
    "action": request["action"],
    "request_id": request["request_id"],
    "requester": request["requester"],
    "requester_email": request.get("requester_email"),
    "resource": request["resource"],
    "expires_at": request.get("expires_at"),
    "handle": request.get("handle"),
    "at": time.time(),
}
if request.get("reason"):
    entry["reason"] = request["reason"]
out = {}
hang = {"grant": log + ".hang", "extend": log + ".hang_extend"}.get(request["action"])
if hang and os.path.exists(hang):
    grandchild = subprocess.Popen(["sleep", "300"])
    with open(log + ".pids", "a") as f:
        f.write(f"{os.getpid()}\n{grandchild.pid}\n")
    entry["hung"] = True
    with open(log, "a") as f:
        f.write(json.dumps(entry) + "\n")
    time.sleep(300)
if request["action"] in ("grant", "extend"):
    if params.get("team"):
        handle = f"team:{request['resource']}"
    elif params.get("shared"):
        handle = f"member:{request['resource']}:{request['requester']}"
    else:
        handle = f"login:{request['resource']}:{request['request_id']}"
    secret = "s3cr3t-" + secrets.token_hex(16)
    credentials = {"USERNAME": f"jit_{request['request_id']}", "PASSWORD": secret}
    if params.get("aws"):
        credentials = {
            "AWS_ACCESS_KEY_ID": f"ASIAJIT{request['request_id']:08d}",
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_SESSION_TOKEN": "token-" + secret,
            "AWS_CREDENTIAL_EXPIRATION": request["expires_at"],
        }
    if params.get("big_credentials"):
        size = int(params["big_credentials"])
        head = (
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
            "    certificate-authority-data: " + "LS0tQ0VSVElGSUNBVEUtLS0t" * 40 + "\n"
            "    server: https://k8s.example.com:6443\n  name: prod\n"
            "users:\n- name: jit\n  user:\n    client-key-data: " + secret + "\n"
            "    client-certificate-data: "
        )
        # Base64 lines as long as real kubeconfigs have them (under 2,000 characters).
        body = ""
        line = 0
        while len(head) + len(body) < size:
            body += "TUlJQ2lqQ0NBWE9nQXdJQkFnSVVkJg=="
            line += 32
            if line >= 1900:
                body += "\n      "
                line = 0
        credentials["KUBECONFIG"] = (head + body)[:size]
    if params.get("long_token"):
        size = int(params["long_token"])
        credentials["TOKEN"] = (secret + "t" * size)[:size]
    out = {
        "handle": handle,
        "credentials": credentials,
        "instructions": f"Connect with the credentials, until {request['expires_at']}.",
    }
    entry["handle"] = handle
    entry["secret"] = secret
with open(log, "a") as f:
    f.write(json.dumps(entry) + "\n")
print(json.dumps(out))
