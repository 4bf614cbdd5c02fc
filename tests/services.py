"""Real servers for the tests, each on 127.0.0.1, each started in its own process group and stopped by it:
a throwaway PostgreSQL, an S3-compatible server (moto) and a multi-process Ray cluster (`ray start` nodes)."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal the process group `proc` leads, then SIGKILL what is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} not written)"


def started(log: Path) -> bool:
    """Whether the `ray start` writing `log` is up: it says so only once its node is registered in the GCS."""
    return log.exists() and "Ray runtime started." in log.read_text(errors="replace")


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:g} s")


# ============================================ PostgreSQL ============================================

def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) not found; set PG_BIN")
    return Path(initdb).parent


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A fresh PostgreSQL server in a temp folder; yields its SQLAlchemy URL.

    PostgreSQL refuses to run as root, so as root the folder is given to the `postgres` account and the
    server runs as that user (subprocess user=, so the pid held is the server's own)."""
    bindir = postgres_bin()
    as_user: dict = {}
    folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))  # not pytest's tmp_path: it is 0700 for root
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "LC_ALL": "C", "HOME": str(folder)}
    data, port = folder / "data", free_port()
    server = None
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--locale=C", "--no-sync", "--no-instructions"], cwd=folder, env=env, check=True,
                       capture_output=True, **as_user)
        settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(folder), "fsync": "off",
                    "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "200"}
        args = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        server = subprocess.Popen(args, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                  stdout=open(folder / "server.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True, **as_user)
        ready = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        wait_for(lambda: server.poll() is None and subprocess.run(ready, env=env).returncode == 0, 60,
                 "PostgreSQL")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if server is not None:
            stop_group(server, first=signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


# ======================================= Ray: one process per node =======================================

def ray_cli() -> str:
    """The `ray` command of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


class RayNodes:
    """A Ray cluster of separate `ray start --block` processes on 127.0.0.1: a head, then workers joining it.

    Every process gets the same environment (RAY_AUTH_MODE=token included, as Ray 2.60 wants), its own ports
    and its own process group, so `stop()` ends exactly these processes."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token",
                    "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        self.procs: list[subprocess.Popen] = []
        self.workers: list[tuple[dict[str, int], subprocess.Popen]] = []  # each joined worker: spec, process
        self.temp_dirs: list[str] = []
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def _ports(self) -> list[str]:
        names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
        return [arg for name in names for arg in (name, str(free_port()))]

    def _start(self, args: list[str], log: str, env: dict[str, str] | None = None) -> None:
        # Each node its own temp folder, as on separate machines: nodes sharing one would share (and clean up)
        # one runtime_resources folder, the job driver's working_dir included. Short: Ray's socket paths.
        temp = tempfile.mkdtemp(prefix="raynode-", dir="/tmp")
        self.temp_dirs.append(temp)
        cmd = [ray_cli(), "start", "--block", "--node-ip-address", "127.0.0.1",
               "--temp-dir", temp, "--disable-usage-stats", *self._ports(), *args]
        self.procs.append(subprocess.Popen(cmd, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL,
                                           stdout=open(self.log_dir / log, "wb"), stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start_head(self, num_cpus: int = 0, autoscaling_workers: dict | None = None) -> None:
        """The head; with `autoscaling_workers` (node type name -> {resources, max_workers}) it runs Ray's
        autoscaler (v1) on the fake multinode provider, which starts worker nodes as local processes."""
        args = ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus), "--include-dashboard", "true",
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
        env = None
        if autoscaling_workers is not None:
            config = self.log_dir / "autoscaling.json"  # JSON is YAML
            config.write_text(json.dumps(fake_autoscaling_config(self.address, num_cpus, autoscaling_workers)))
            args.append(f"--autoscaling-config={config}")
            env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "0"}
        self._start(args, "head.log", env)
        head, log = self.procs[-1], self.log_dir / "head.log"
        try:  # `ray start --block` runs as long as its node: an exit is a failed start, said at once with its log
            wait_for(lambda: head.poll() is not None or started(log), 90, "Ray head")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; its log:\n{tail(log)}") from None
        if head.poll() is not None:
            raise RuntimeError(f"Ray head exited with code {head.returncode} before it was up; its log:\n{tail(log)}")

    def add_worker(self, num_cpus: int = 1, num_gpus: int = 0) -> None:
        self.add_workers({"num_cpus": num_cpus, "num_gpus": num_gpus})

    def add_workers(self, *specs: dict[str, int]) -> None:
        """Workers joining the head, started together (each {"num_cpus": N, "num_gpus": M}). One that exits before
        it joins, as a node can on a loaded machine (its agents late, a port taken between choosing and binding), is
        started once more with new ports; one that exits again, or never joins, fails the wait with its log."""
        workers = [[spec, *self._start_worker(spec), False] for spec in specs]  # spec, process, log, restarted

        def joined() -> bool:
            for worker in workers:
                spec, proc, log, restarted = worker
                if proc.poll() is None:
                    continue
                if restarted:
                    raise RuntimeError(f"Ray worker exited twice before joining; its log:\n{tail(log)}")
                worker[1:] = [*self._start_worker(spec), True]
            return all(started(log) for _, _, log, _ in workers)

        try:
            wait_for(joined, 180, "Ray workers")
        except TimeoutError as error:
            logs = "\n".join(tail(log) for _, _, log, _ in workers)
            raise TimeoutError(f"{error}; their logs:\n{logs}") from None
        self.workers += [(spec, proc) for spec, proc, _, _ in workers]

    def _start_worker(self, spec: dict[str, int]) -> tuple[subprocess.Popen, Path]:
        """A worker process joining the head, and the file its output goes to."""
        log = f"worker{len(self.procs)}.log"
        self._start(["--address", self.address, "--num-cpus", str(spec.get("num_cpus", 1)),
                     "--num-gpus", str(spec.get("num_gpus", 0))], log)
        return self.procs[-1], self.log_dir / log

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """Lose a worker node at once, as when its machine dies: SIGKILL to its `ray start` and every process
        below it (the raylet, its agents, and its Ray workers, which run in sessions of their own)."""
        doomed = [proc.pid, *descendants(proc.pid)]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)  # first stop all, so none starts another or reports once more
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def nodes(self) -> list[dict]:
        """Alive nodes as the GCS sees them (NodeID, Resources), asked from a separate process so that this
        one stays out of Ray; [] while the head is not up."""
        probe = ("import json, ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
                 "print(json.dumps([{'NodeID': n['NodeID'], 'Resources': n['Resources']} "
                 "for n in ray.nodes() if n['Alive']]))")
        try:
            out = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env, capture_output=True,
                                 text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return []
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if out.returncode == 0 and lines else []

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.log_dir.glob("*.log"))

    def stop(self) -> None:
        # Every node told at once, then waited for: one grace period in all, not one per node.
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):  # a worker whose head is gone may wait for it: not for long
            stop_group(proc, grace=3.0)
        self.procs.clear()
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


def fake_autoscaling_config(gcs_address: str, head_cpus: int, workers: dict) -> dict:
    """A cluster config for Ray's fake_multinode provider (what ray.cluster_utils.AutoscalingCluster builds
    from a YAML file missing from the wheel). gcs_address: else new nodes look for the GCS at MACHINE_IP:6379."""
    types = {name: {"node_config": {}, "min_workers": 0, **spec} for name, spec in workers.items()}
    types["ray.head.default"] = {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}
    return {"cluster_name": "fake", "max_workers": sum(t.get("max_workers", 0) for t in types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": types, "head_node_type": "ray.head.default", "auth": {},
            "upscaling_speed": 1.0, "idle_timeout_minutes": 1.0, "docker": {}, "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": []}


# ============================================ S3 (moto) ============================================

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """moto's S3 server over HTTP on 127.0.0.1 with one bucket; yields the `endpoint_override=...&scheme=http`
    query that points pyarrow (and Ray) at it. Needs S3_ENV in the environment of every process using it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", **{
            "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]})
        client.create_bucket(Bucket=bucket)
        yield f"endpoint_override={host}:{port}&scheme=http"
    finally:
        server.stop()


def process_stats() -> Iterator[tuple[Path, list[str]]]:
    """Each process's /proc folder and the fields of its stat after the command name (state, ppid, pgrp,
    session, ...); a process gone while read is left out."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield stat.parent, stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for folder, fields in process_stats():
        children.setdefault(int(fields[1]), []).append(int(folder.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def listening_addresses(session_id: int) -> list[str]:
    """IP addresses of the TCP sockets listening in every process of one session (from /proc)."""
    def hex_ip(text: str) -> str:
        raw = bytes.fromhex(text)
        if len(raw) == 4:
            return socket.inet_ntop(socket.AF_INET, raw[::-1])
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # /proc prints 4-byte words host-endian
        return socket.inet_ntop(socket.AF_INET6, words)

    listening: dict[str, str] = {}  # socket inode -> local IP
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening[fields[9]] = hex_ip(fields[1].split(":")[0])
    found = []
    for folder, fields in process_stats():
        if int(fields[3]) != session_id:
            continue
        try:
            links = [os.readlink(fd) for fd in (folder / "fd").iterdir()]
        except OSError:
            continue
        found += [listening[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in listening]
    return found
