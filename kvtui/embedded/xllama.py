"""Child-process entry point that serves llama.cpp's HTTP server through ``xllamacpp``.

Run as ``python -m kvtui.embedded.xllama '<json params>'``; ``EmbeddedServer`` does this. The
process serves until it is terminated.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading


def main(argv: list[str]) -> int:
    import xllamacpp

    opts = json.loads(argv[0])
    params = xllamacpp.CommonParams()
    params.model.path = opts["model"]
    params.n_ctx = int(opts["n_ctx"])
    params.n_parallel = int(opts["n_parallel"])
    params.kv_unified = bool(opts["kv_unified"])
    # llama-server's own flag parser adds the trailing separator; the server then joins the
    # directory and the file name as plain strings, so without it saves land beside the folder.
    save_path = opts["slot_save_path"]
    params.slot_save_path = os.path.join(save_path, "") if save_path else ""
    params.endpoint_slots = True
    params.endpoint_metrics = True
    params.endpoint_props = True
    if opts.get("cache_ram_mib") is not None:
        params.cache_ram_mib = int(opts["cache_ram_mib"])
    params.cpuparams.n_threads = int(opts["threads"])
    params.cpuparams_batch.n_threads = int(opts["threads"])
    params.hostnames = [opts["host"]]
    params.port = int(opts["port"])
    if opts.get("api_key"):
        params.api_keys = [opts["api_key"]]
    server = xllamacpp.Server(params)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
