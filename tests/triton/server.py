"""Start a real ``tritonserver`` on CPU (from nvidia-pytriton) on free ports, serving an ALPS model repository.

    python -m tests.triton.server --model-repository model_repository   # serves until Ctrl-C

Recipe (DESIGN.md): the server runs in the separate ``.venv-triton`` environment (its Python backend stub needs
numpy < 2); our backend directory holds the Python backend's library and stub, plus ``onnxruntime/model.py``
so that ``platform: "onnxruntime_onnx"`` configs load unchanged. Models load explicitly; services bind 127.0.0.1.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from alps_client.backends.triton_shm import SHM_DIR, region_name, stale_region_names

REPO_ROOT = Path(__file__).resolve().parents[2]
# The Python backend keeps each model instance's messages in /dev/shm regions (RAM); a server killed with SIGKILL
# leaves them there until the machine restarts (measured: 186 MB per test suite, 9.3 GB on a machine after a
# day of runs). Each server gets a prefix of its own, so that `stop` removes what it left, whatever the signal; a
# server dies with the process that started it (a test run killed by a CI timeout, a closed terminal), and the prefix
# names that process, so that the next start removes what a server of a killed test run left (_sweep_dead_servers).
SHM_PREFIX = "test_triton_"
TRITON_VENV = REPO_ROOT / ".venv-triton"
HERE = Path(__file__).resolve().parent


def _free_port(avoid: tuple[int | None, ...] = ()) -> int:
    """A free local port, none of ``avoid``: a server restarted on its gRPC port was given that port for HTTP too
    (free again once the server died) and refused both ("cannot listen ... at the same address and port")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def backend_dir(workdir: Path, venv: Path = TRITON_VENV) -> Path:
    """Assemble ``<workdir>/backends/{python,onnxruntime}`` from the pytriton wheel and our model.py."""
    site = _site_packages(venv)
    server = site / "pytriton" / "tritonserver"
    py = f"{sysconfig.get_config_var('py_version_short')}"
    out = workdir / "backends"
    utils = next(server.rglob("triton_python_backend_utils.py"))
    for source, folder in ((server / "backends" / "python" / "libtriton_python.so", "python"), (utils, "python"),
                           (server / "python_backend_stubs" / py / "triton_python_backend_stub", "python"),
                           (HERE / "backends" / "onnxruntime" / "model.py", "onnxruntime")):
        _replace_file(source, out / folder / source.name)
    return out


def _replace_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a new file renamed over it: a server killed with SIGKILL leaves its
    Python backend stubs running, and copying over a running stub fails ("Text file busy")."""
    from alps_client.io.atomic import atomic_path

    with atomic_path(target) as staged:
        shutil.copy2(source, staged)  # with its mode: the stub is executed


@dataclass
class TritonProcess:
    """A running server: its ports and process."""

    process: subprocess.Popen
    grpc_port: int
    http_port: int
    log_path: Path
    shm_prefix: str

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)


def _sweep_dead_servers() -> None:
    """Remove the /dev/shm regions of servers whose test process is gone (and they with it: `_die_with_parent`)."""
    regions = {p: "_".join(p.name[len(SHM_PREFIX):].split("_")[:4]) for p in SHM_DIR.glob(f"{SHM_PREFIX}alps_*")}
    stale = set(stale_region_names(regions.values()))
    for path, owner in regions.items():
        if owner in stale:
            path.unlink(missing_ok=True)


_LIBC = ctypes.CDLL(None, use_errno=True)  # looked up here, not between fork and exec (no dlopen in the child)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """SIGKILL this process when its parent dies: a test run that is killed takes its server with it."""
    _LIBC.prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG (linux/prctl.h)


def start_triton(model_repository: Path, workdir: Path, models: tuple[str, ...] = ("sam_encoder", "sam_decoder"),
                 grpc_port: int | None = None, http_port: int | None = None, timeout_s: float = 120.0) -> TritonProcess:
    """Start tritonserver, load ``models`` and wait until they are ready."""
    import urllib.request

    venv = TRITON_VENV
    if not (venv / "bin" / "python").exists():
        raise RuntimeError(f"{venv} is missing; run `make setup` (it builds the Triton server environment)")
    site = _site_packages(venv)
    server = site / "pytriton" / "tritonserver"
    backends = backend_dir(workdir, venv)
    grpc_port = grpc_port or _free_port((http_port,))
    http_port = http_port or _free_port((grpc_port,))
    _sweep_dead_servers()
    shm_prefix = f"{SHM_PREFIX}{region_name()}_"  # region_name: alps_<namespace>_<this pid>_<12 hex>
    libdir = sysconfig.get_config_var("LIBDIR")
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libdir, str(site / "nvidia_pytriton.libs"),
                                                          os.environ.get("LD_LIBRARY_PATH")])),
        "PATH": os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]),
        "PYTHONPATH": str(site),
        "VIRTUAL_ENV": str(venv),
    }
    cmd = [
        str(server / "bin" / "tritonserver"), f"--model-repository={model_repository}",
        f"--backend-directory={backends}", "--model-control-mode=explicit", *[f"--load-model={m}" for m in models],
        "--allow-gpu-metrics=false", "--allow-metrics=false", "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size=0:0", "--exit-timeout-secs=5",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}", f"--grpc-port={grpc_port}",
        f"--http-port={http_port}", "--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--log-verbose=0",
    ]
    log_path = workdir / f"tritonserver-{grpc_port}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)  # noqa: PLW1509 (one foreign call, no lock taken)
    triton = TritonProcess(proc, grpc_port, http_port, log_path, shm_prefix)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            triton.stop()
            raise RuntimeError(f"tritonserver exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{triton.http_url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return triton
        except OSError:
            pass
        time.sleep(0.25)
    triton.stop()
    raise RuntimeError(f"tritonserver not ready after {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--workdir", default="/tmp/alps-triton")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    triton = start_triton(Path(args.model_repository).resolve(), work, grpc_port=args.grpc_port, http_port=args.http_port)
    print(f"Triton ready: gRPC {triton.grpc_url}, HTTP {triton.http_url} (log {triton.log_path}); Ctrl-C stops it")
    try:
        triton.process.wait()
    except KeyboardInterrupt:
        triton.stop()


if __name__ == "__main__":
    main()
