"""A throwaway container registry (Debian's ``docker-registry``, distribution 2.8) on 127.0.0.1.

For tests, benchmarks and ``./run dev``: its own config and filesystem root under a directory of
ours, deletes enabled, plain HTTP on loopback, optionally basic auth from an htpasswd file.
distribution only accepts bcrypt htpasswd entries; they are made with the system's libcrypt
(libxcrypt supports ``$2b$``) through ctypes, so neither apache2-utils nor a Python bcrypt
package is needed. htpasswd auth works over plain HTTP with distribution 2.8 (it only warns).

    python -m acci_ops.dev.registry DIR [--port P]   # run in the foreground until Ctrl-C
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from acci_ops.dev.servers import require, stop_process
from acci_ops.lib.core.net import free_port


def bcrypt_hash(password: str, rounds: int = 5) -> str:
    """A ``$2b$`` bcrypt hash from libcrypt (what distribution's htpasswd accepts)."""
    name = ctypes.util.find_library("crypt")
    if not name:
        raise RuntimeError("libcrypt is missing (package libcrypt1); it is needed for the registry's htpasswd")
    lib = ctypes.CDLL(name)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    entropy = secrets.token_bytes(16)
    salt = lib.crypt_gensalt(b"$2b$", rounds, entropy, len(entropy))
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2b$"):
        raise RuntimeError("this libcrypt cannot make bcrypt hashes, needed for the registry's htpasswd")
    return hashed.decode()


@dataclass
class LocalRegistry:
    """A running docker-registry: ``host`` is ``127.0.0.1:<port>``, ``url`` its HTTP base."""

    host: str
    root: Path
    process: subprocess.Popen
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def repository(self, name: str = "acci/acci-framework") -> str:
        return f"{self.host}/{name}"

    def stop(self) -> None:
        stop_process(self.process)


def write_config(workdir: Path, port: int, *, htpasswd: Path | None = None) -> Path:
    """The registry's config.yml (JSON is valid YAML): loopback, filesystem root, deletes on."""
    config: dict = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16),
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if htpasswd:
        config["auth"] = {"htpasswd": {"realm": "acci-registry", "path": str(htpasswd)}}
    path = workdir / "config.yml"
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path


def start_registry(workdir: Path, *, port: int | None = None, username: str | None = None,
                   password: str | None = None) -> LocalRegistry:
    """Start ``docker-registry serve`` on 127.0.0.1 (a free port unless given); return once it answers.

    With ``username``/``password`` it requires basic auth (bcrypt htpasswd in ``workdir``)."""
    binary = require("docker-registry", "apt-get install -y docker-registry")
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if username or password:
        if not (username and password):
            raise ValueError("a registry with auth needs both username and password")
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(f"{username}:{bcrypt_hash(password)}\n")
        htpasswd.chmod(0o600)
    port = port or free_port()
    config = write_config(workdir, port, htpasswd=htpasswd)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
    with open(workdir / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    registry = LocalRegistry(f"127.0.0.1:{port}", workdir, proc, username, password)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(registry.url + "/v2/", timeout=1).close()
            return registry
        except urllib.error.HTTPError as exc:  # 401 with auth on: it is up
            if exc.code == 401:
                return registry
            raise
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                registry.stop()
                tail = (workdir / "registry.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise RuntimeError(f"docker-registry did not start on {registry.host}: {tail[0]}") from None
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a local docker-registry in the foreground.")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    registry = start_registry(args.workdir, port=args.port)
    print(f"registry on {registry.url} (data in {args.workdir / 'data'}); Ctrl-C stops it", flush=True)
    # Stopped by Ctrl-C or by ./run dev's SIGTERM: the registry (its own session) goes with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        registry.process.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        registry.stop()


if __name__ == "__main__":
    main()
