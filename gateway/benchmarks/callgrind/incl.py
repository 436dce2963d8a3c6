#!/usr/bin/env python3
"""Per-purchase instructions of the gateway-side tasks in a callgrind file of phase.sh.

Each function's inclusive Ir is its own cost plus the inclusive cost of its calls to other
functions (the `calls=` lines); divided by the calls of the bench's `purchase_request` (one
per request made). Prints the connection task, the commit task (before issue 19's inline
commit), the publisher task and its batch tasks, their sum, and the runtime's task polls
(`Context::run_task`, scheduling included) minus the load generator's own tasks.
"""
import collections
import re
import sys

names = {}
own = collections.Counter()
callees = collections.Counter()
calls = collections.Counter()


def name(kind, v):
    m = re.match(r"\((\d+)\)(?: (.*))?", v)
    if not m:
        return v
    key = (kind, m.group(1))
    if m.group(2) is not None:
        names[key] = m.group(2)
    return names[key]


cur = cfn = pending = None
with open(sys.argv[1], errors="replace") as f:
    for line in f:
        line = line.rstrip("\n")
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            parts = line.split()
            ir = int(parts[1]) if len(parts) > 1 else 0
            if pending is not None:
                callee, n = pending
                if callee != cur:
                    callees[cur] += ir
                calls[callee] += n
                pending = None
            else:
                own[cur] += ir
        elif line.startswith("fn="):
            cur = name("fn", line[3:])
        elif line.startswith("cfn="):
            cfn = name("fn", line[4:])
        elif line.startswith("calls="):
            pending = (cfn, int(line[6:].split()[0]))
        elif line.startswith(("fl=", "fi=", "fe=", "cfi=", "cfl=")):
            name("fl", line.split("=", 1)[1])
        elif line.startswith(("ob=", "cob=")):
            name("ob", line.split("=", 1)[1])

incl = lambda fn: own[fn] + callees[fn]
n = calls["gateway_bench::purchase_request"]
batches = calls["queue::engine::Engine::publish_each_submit"]
k = lambda fn: incl(fn) / max(n, 1) / 1000
conn = k("gateway::front::serve_connection::{{closure}}")
commit = k("gateway::purchase::purchase::{{closure}}::{{closure}}")
publisher = k("gateway::publisher::run::{{closure}}")
batch = k("gateway::publisher::run::{{closure}}::{{closure}}")
runtime = k("tokio::runtime::scheduler::multi_thread::worker::Context::run_task") - k(
    "loadgen::closed_loop::{{closure}}::{{closure}}"
)
print(
    f"requests {n}, batches {batches} ({n / max(batches, 1):.2f} a batch); per request: "
    f"connection task {conn:.1f}k, commit task {commit:.1f}k, publisher {publisher:.2f}k, "
    f"batch tasks {batch:.2f}k, sum {conn + commit + publisher + batch:.1f}k; "
    f"runtime task polls minus the load generator's {runtime:.1f}k"
)
