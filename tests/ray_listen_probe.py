"""Run by tests/test_ray_quiet.py in a fresh interpreter: start a Ray evaluator the way `evo-pai run`
does (Ray started here), list every listening socket of this process and the processes it started,
and try each of those ports for a Prometheus answer. Prints one JSON object."""
from __future__ import annotations

import json
import sys
import urllib.request

from evo_pai.core.config import build_config
from evo_pai.evaluation.base import make_evaluator
from evo_pai.runs.components import load_components

# Ray's fixed autoscaler/dashboard metrics ports and the dashboard: none may be ours. (Another Ray on this
# machine may hold them; only ports our processes listen on are probed.)
RAY_FIXED_PORTS = {44217, 44227, 8265}


def prometheus_answers(port: int) -> bool:
    for path in ("/metrics", "/"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
                body = r.read(4096).decode("utf-8", "replace")
        except Exception:  # refused, reset, HTTP error, gRPC talking HTTP/2: no metrics here
            continue
        if "# HELP" in body or "# TYPE" in body:
            return True
    return False


def main() -> None:
    load_components()
    import ray  # noqa: F401  (Ray ships psutil in ray/thirdparty_files and puts it on sys.path)
    import psutil

    cfg = build_config(json.loads(sys.argv[1]))
    with make_evaluator(cfg) as ev:
        me = psutil.Process()
        listening = []
        for proc in [me, *me.children(recursive=True)]:
            try:
                conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections("inet")
                cmd = proc.cmdline()
                name = " ".join([cmd[0].rsplit("/", 1)[-1], *(a.rsplit("/", 1)[-1] for a in cmd[1:2])])
            except psutil.Error:
                continue
            listening += [{"pid": proc.pid, "process": name, "ip": c.laddr.ip, "port": c.laddr.port}
                          for c in conns if c.status == psutil.CONN_LISTEN]
        ports = sorted({s["port"] for s in listening})
        print(json.dumps({"device": ev.device_name, "listening": listening,
                          "fixed_ports": sorted(RAY_FIXED_PORTS & set(ports)),
                          "metrics": [p for p in ports if prometheus_answers(p)]}))


if __name__ == "__main__":
    main()
