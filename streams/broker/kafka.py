"""Apache Kafka for development and tests: ``python -m streams.broker --kafka``.

The broker our users run in production, started from its own jars (no Docker, no
downloaded tarball): ``org.apache.kafka:kafka_2.13`` as pinned in
``deploy/kafka/pom.xml``, fetched once through Maven into a cache outside the
repository (``$XDG_CACHE_HOME/order-streams/kafka-<version>/``, else
``~/.cache/...``); later runs start offline from that cache.

The rules this module keeps:

- **Nothing starts on a taken port.** Every client port is checked free before any
  ``java`` starts; a taken one is :class:`PortInUseError`.
- **The URL means a working cluster.** :meth:`KafkaBroker.start` returns (and
  ``main`` prints the ``kafka://`` URL) only once an aiokafka Metadata request
  lists every node, and each node's ``java`` itself holds its client port.
- **No java is left behind.** Each node runs in a process group of its own: a stop
  is SIGTERM (Kafka's controlled shutdown), then SIGKILL to the whole group after
  ``stop_timeout``. With ``die_with_parent`` each node also gets
  ``PR_SET_PDEATHSIG`` = SIGKILL, so even a SIGKILLed parent takes it down.
- **Data persists.** KRaft storage is formatted once under ``data_dir`` (a cluster
  id and the node count are kept in ``cluster.properties``); a restart on the same
  directory keeps every topic, record and committed offset. A directory formatted
  for another node count is refused rather than half reused.
- **Errors are one line** (:class:`KafkaSetupError`): no ``java`` or Java < 17, no
  Maven and no cached jars, Maven unable to reach its repository.

Broker settings are small-machine settings (heap, threads, the log cleaner's dedupe
buffer, few internal-topic partitions, no initial rebalance delay); everything else
is Kafka's default, including auto topic creation and the log cleaner.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from streams.broker.ports import PortInUseError, free_port, kill_when_parent_dies, port_free, process_listens

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
#: The copy-dependencies goal, pinned: Maven 3.8.7 would default to plugin 2.8.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
MIN_JAVA = 17
#: JVM heap per node: small, fixed (running ``java`` directly skips Kafka's scripts and
#: their defaults).
HEAP = ("-Xms256m", "-Xmx512m")
#: JIT and GC for a development or test broker: the client compiler only and the serial
#: collector start a node sooner on a busy machine (measured: docs/design-notes.md,
#: "The Kafka runner's JVM"). A benchmark of the broker itself passes
#: ``jvm_options=()`` for the JVM's defaults (C2, G1).
QUICK_START_JVM = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


class KafkaSetupError(RuntimeError):
    """Kafka cannot be started here; the message is one line saying why and what to do."""


def pinned_version(pom: Path = POM) -> str:
    """``kafka.version`` from the pom (the one place the version is written)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if not match:
        raise KafkaSetupError(f"{pom} names no <kafka.version>")
    return match.group(1).strip()


KAFKA_VERSION = pinned_version()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "order-streams"


# -- java ---------------------------------------------------------------------------------


def java_command() -> str | None:
    """``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java`` on PATH (None: none)."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def parse_java_version(text: str) -> int | None:
    """The feature release from ``java -version`` output: ``"17.0.15"`` → 17, ``"1.8.0_412"`` → 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> str:
    """The java to run, or :class:`KafkaSetupError` when there is none or it is older than 17."""
    java = java_command()
    if java is None:
        raise KafkaSetupError(
            f"no java found (JAVA_HOME or PATH): Apache Kafka needs Java {MIN_JAVA}+ "
            "(e.g. apt-get install openjdk-17-jre-headless), or use the Tansu broker (--tansu)")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaSetupError(f"{java} -version failed ({exc}); Apache Kafka needs Java {MIN_JAVA}+") from None
    version = parse_java_version(out.stderr + out.stdout)
    if version is None or version < MIN_JAVA:
        found = f"Java {version}" if version else "an unknown Java version"
        raise KafkaSetupError(
            f"{java} is {found}; Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+ "
            "(set JAVA_HOME to a newer JDK), or use the Tansu broker (--tansu)")
    return java


# -- jars -----------------------------------------------------------------------------------


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def kafka_jars(*, pom: Path = POM, cache: Path | None = None,
               say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> Path:
    """The directory of the pinned Kafka's runtime jars, fetched through Maven on first use.

    The cache is keyed by version and holds the digest of the pom it came from: an
    edited pom (another log4j, say) fetches again. A fetch goes to a temporary
    directory renamed into place when complete, so an interrupted one is never used.
    """
    version = pinned_version(pom)
    cache = cache or cache_root()
    home = cache / f"kafka-{version}"
    libs = home / "libs"
    digest = _pom_digest(pom)
    stamp = home / "pom.sha256"
    if libs.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError(
            f"no Apache Kafka {version} jars cached in {home} and no mvn on PATH to fetch them "
            "(apt-get install maven), or use the Tansu broker (--tansu)")
    say(f"fetching Apache Kafka {version} (org.apache.kafka:kafka_2.13 + log4j, ~45 MB of jars) "
        f"from Maven Central into {home} (once; later runs use the cache, offline too)")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".kafka-{version}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    cmd = [mvn, "-q", "-B", "-f", str(pom), DEPENDENCY_PLUGIN, "-DincludeScope=runtime",
           f"-DoutputDirectory={partial / 'libs'}"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        shutil.rmtree(partial, ignore_errors=True)
        raise KafkaSetupError(f"Maven did not fetch Apache Kafka {version} within 15 minutes") from None
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise KafkaSetupError(
            f"could not fetch Apache Kafka {version} with Maven and none is cached in {home}: "
            f"{_maven_reason(result.stdout + result.stderr)}")
    (partial / "pom.sha256").write_text(digest + "\n")
    shutil.copy(pom, partial / "pom.xml")
    shutil.rmtree(home, ignore_errors=True)
    partial.rename(home)
    jars = list(libs.glob("*.jar"))
    size = sum(j.stat().st_size for j in jars)
    say(f"fetched {len(jars)} jars, {size / 1e6:.0f} MB, in {time.monotonic() - started:.0f} s")
    return libs


def _maven_reason(output: str) -> str:
    """The first informative ``[ERROR]`` line of a failed Maven run, trimmed to one line."""
    for line in output.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line.startswith("[ERROR]") and len(line) > 10 and "Re-run Maven" not in line and "-> [Help" not in line:
            text = line[len("[ERROR]"):].strip()
            return (text[:300] + "…") if len(text) > 300 else text
        if line.startswith("[ERROR]") and "-> [Help" in line:
            text = line[len("[ERROR]"):].split("-> [Help")[0].strip()
            return (text[:300] + "…") if len(text) > 300 else text
    return "Maven failed (no network to Maven Central?)"


# -- configuration ----------------------------------------------------------------------------


def random_cluster_id() -> str:
    """A KRaft cluster id as ``StorageTool random-uuid`` makes one (URL-safe base64 of 16
    random bytes, never starting with '-')."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def node_properties(node_id: int, *, port: int, controller_ports: dict[int, int], log_dir: Path,
                    overrides: dict[str, object] | None = None) -> str:
    """``server.properties`` of one combined broker+controller node of a static-voter quorum
    (``overrides``: settings that replace or add to these, e.g. a test broker's)."""
    n = len(controller_ports)
    rf = min(3, n)
    voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in sorted(controller_ports.items()))
    settings = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_ports[node_id]}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": log_dir,
        # internal topics: replicated as far as the cluster allows, few partitions
        "offsets.topic.replication.factor": rf,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": min(2, rf),
        "transaction.state.log.num.partitions": 4,
        # a transaction open past its timeout is aborted within a second of it, not up to
        # 10 s later (the default): the transaction-timeout fault test (engine rule T6)
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": 1000,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": min(2, rf),
        # as docker-compose.yml's cluster profile (deploy/cluster.env): topics created
        # without a replication factor get the cluster's, and acks=all needs rf - 1 replicas
        "default.replication.factor": rf,
        "min.insync.replicas": max(1, rf - 1),
        "num.partitions": 4,  # as docker-compose.yml (KAFKA_NUM_PARTITIONS: TOPIC_PARTITIONS, 4)
        "group.initial.rebalance.delay.ms": 0,
        # a small machine: few threads, a small cleaner buffer (default 128 MB)
        "num.network.threads": 2,
        "num.io.threads": 2,
        "background.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "log.cleaner.threads": 1,
        "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
        # the cleaner looks for dirty logs every second, not every 15: a compacted topic
        # with a small segment.ms is compacted within seconds (tests show recovery from it)
        "log.cleaner.backoff.ms": 1000,
        # the worker produces records up to MAX_MESSAGE_BYTES (16 MiB by default)
        "message.max.bytes": 16 * 1024 * 1024 + 1024,
        "replica.fetch.max.bytes": 16 * 1024 * 1024 + 1024,
        **(overrides or {}),
    }
    return "".join(f"{k}={v}\n" for k, v in settings.items())


LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
"""


def _read_properties(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# -- the cluster -------------------------------------------------------------------------------


class KafkaBroker:
    """One Apache Kafka node, or an ``nodes``-node KRaft quorum, on loopback; a context
    manager that stops it.

    ``port``: the first node's client port (the others follow it: port+1, …); None or 0
    chooses free ports. Once started, the ports are kept, so :meth:`stop` then
    :meth:`start` brings the same cluster back on the same addresses, data intact.
    """

    def __init__(self, data_dir: Path | str, *, nodes: int = 1, port: int | None = None,
                 quiet: bool = True, stop_timeout: float = 30.0,
                 jvm_options: tuple[str, ...] = QUICK_START_JVM,
                 overrides: dict[str, object] | None = None) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.data_dir = Path(data_dir)
        self.nodes = nodes
        self.quiet = quiet
        self.stop_timeout = stop_timeout
        self.jvm_options = tuple(jvm_options)
        #: broker settings on top of :func:`node_properties`' (a test broker's, say)
        self.overrides = dict(overrides or {})
        self.ports: list[int] = [port + i for i in range(nodes)] if port else []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._lock_fd: int | None = None
        self._java: str | None = None
        self._libs: Path | None = None
        self._preexec: Callable[[], None] | None = None
        #: seconds the last start took (from the first ``java`` to a good Metadata answer)
        self.start_seconds: float | None = None

    # -- addresses ---------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def url(self) -> str:
        return "kafka://" + self.bootstrap

    @property
    def port(self) -> int:
        """The first node's client port (as :attr:`EmbeddedBroker.port`)."""
        return self.ports[0]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    def node_log(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}.out"

    # -- start ---------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0, *, die_with_parent: bool = False) -> "KafkaBroker":
        """Start every node; return once Metadata lists them all.

        Raises :class:`PortInUseError` (before any ``java`` starts) for a taken port and
        :class:`KafkaSetupError` for everything else that stops it, stopping whatever
        had started. ``die_with_parent``: see :func:`kill_when_parent_dies` (a main
        thread only).
        """
        if self.processes:
            raise RuntimeError("already started")
        if not self.ports:
            self.ports = _distinct_free_ports(self.nodes)
        for port in self.ports:
            if not port_free(port):
                raise PortInUseError(port)
        java = check_java()
        libs = kafka_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            controller_ports = dict(zip(range(1, self.nodes + 1), _distinct_free_ports(self.nodes, avoid=self.ports)))
            cluster_id = self._cluster_id()
            (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(level="WARN" if self.quiet else "INFO"))
            configs: dict[int, Path] = {}
            for node_id, port in zip(range(1, self.nodes + 1), self.ports):
                config = self.data_dir / f"node-{node_id}.properties"
                config.write_text(node_properties(node_id, port=port, controller_ports=controller_ports,
                                                  log_dir=self.data_dir / f"node-{node_id}",
                                                  overrides=self.overrides))
                configs[node_id] = config
            self._format(java, libs, cluster_id, configs)
            started = time.monotonic()
            self._java, self._libs = java, libs
            self._preexec = kill_when_parent_dies() if die_with_parent else None
            for node_id, config in configs.items():
                self.processes[node_id] = self._spawn(java, libs, config, self.node_log(node_id), self._preexec)
            self._wait_ready(started + timeout)
            self.start_seconds = time.monotonic() - started
        except BaseException:
            self.stop(timeout=5.0)
            raise
        return self

    def _lock(self) -> None:
        """One runner per data directory (a second would corrupt the first's logs)."""
        fd = os.open(self.data_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise KafkaSetupError(f"{self.data_dir} is in use by another Kafka runner; stop it or use "
                                  "another data directory") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _cluster_id(self) -> str:
        """This directory's cluster id (made on first use); refuses another node count."""
        path = self.data_dir / "cluster.properties"
        if path.is_file():
            props = _read_properties(path)
            if int(props.get("nodes", "0")) != self.nodes:
                raise KafkaSetupError(
                    f"{self.data_dir} holds a {props.get('nodes')}-node Kafka cluster, not {self.nodes}; "
                    "start it with that many nodes or use another data directory")
            return props["cluster.id"]
        cluster_id = random_cluster_id()
        path.write_text(f"cluster.id={cluster_id}\nnodes={self.nodes}\nkafka.version={KAFKA_VERSION}\n")
        return cluster_id

    def _jvm(self, java: str, libs: Path) -> list[str]:
        return [java, *HEAP, *self.jvm_options, "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp", str(libs / "*")]

    def _format(self, java: str, libs: Path, cluster_id: str, configs: dict[int, Path]) -> None:
        """``StorageTool format`` for every node whose log directory is not formatted yet
        (in parallel: each is a JVM start)."""
        todo = {i: c for i, c in configs.items() if not (self.data_dir / f"node-{i}" / "meta.properties").exists()}
        running = {
            i: subprocess.Popen([*self._jvm(java, libs), "kafka.tools.StorageTool", "format",
                                 "-t", cluster_id, "-c", str(c)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i, c in todo.items()
        }
        for i, proc in running.items():
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                last = [line for line in out.splitlines() if line.strip()][-1:] or ["no output"]
                raise KafkaSetupError(f"formatting Kafka storage for node {i} failed: {last[0].strip()}")

    def _spawn(self, java: str, libs: Path, config: Path, log: Path,
               preexec: Callable[[], None] | None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if self.quiet else None
        try:
            return subprocess.Popen([*self._jvm(java, libs), "kafka.Kafka", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True, preexec_fn=preexec)
        finally:
            if out is not None:
                out.close()

    def _wait_ready(self, deadline: float) -> None:
        while True:
            for node_id, proc in self.processes.items():
                if proc.poll() is not None:
                    raise KafkaSetupError(f"Kafka node {node_id} exited with code {proc.returncode} at start: "
                                          f"{self._last_line(node_id)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaSetupError(f"Kafka did not answer Metadata with {self.nodes} node(s) in time; "
                                      f"see {self.node_log(1)}")
            # First each java's own listener (from /proc: no connection attempts, no
            # client log lines while the JVM starts), then a real Metadata request.
            if self._own_ports() and _in_thread(metadata_lists(self.bootstrap, self.nodes,
                                                                timeout=min(remaining, 5.0))):
                return
            time.sleep(0.2)

    def _own_ports(self) -> bool:
        """Each node's java itself listens on its client port (not another process;
        True where /proc cannot tell)."""
        for (_node_id, proc), port in zip(sorted(self.processes.items()), self.ports):
            if process_listens(proc.pid, port) is False:
                return False
        return True

    def _last_line(self, node_id: int) -> str:
        try:
            lines = [line for line in self.node_log(node_id).read_text(errors="replace").splitlines()
                     if line.strip()]
        except OSError:
            return "no log"
        errors = [line for line in lines if " ERROR " in line or "Exception" in line]
        return ((errors or lines or ["no log"])[-1]).strip()[:300]

    # -- failures --------------------------------------------------------------------------------
    def exited(self) -> dict[int, int]:
        """Nodes whose ``java`` has exited: node id → exit code."""
        return {i: p.returncode for i, p in self.processes.items() if p.poll() is not None}

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node (its process group); :meth:`restart_node` brings it back."""
        proc = self.processes[node_id]
        _killpg(proc, signal.SIGKILL)
        proc.wait(10)

    def restart_node(self, node_id: int) -> None:
        """Start a stopped or killed node again, with its config and data (not waiting)."""
        proc = self.processes.get(node_id)
        if proc is not None and proc.poll() is None:
            raise RuntimeError(f"node {node_id} is running")
        assert self._java and self._libs, "start() first"
        self.processes[node_id] = self._spawn(self._java, self._libs, self.data_dir / f"node-{node_id}.properties",
                                              self.node_log(node_id), self._preexec)

    # -- stop ------------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every node (a controlled shutdown); SIGKILL each node's process group
        whatever is left after ``timeout`` (default ``stop_timeout``). Ports are kept for
        the next :meth:`start`."""
        timeout = self.stop_timeout if timeout is None else timeout
        procs, self.processes = list(self.processes.values()), {}
        try:
            for proc in procs:
                if proc.poll() is None:
                    _killpg(proc, signal.SIGTERM, group=False)
            deadline = time.monotonic() + timeout
            for proc in procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for proc in procs:  # the whole group: nothing the JVM started survives it
                _killpg(proc, signal.SIGKILL)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered
                    pass
            self._unlock()

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _killpg(proc: subprocess.Popen[bytes], sig: int, *, group: bool = True) -> None:
    try:
        if group:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the pid
        else:
            os.kill(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _distinct_free_ports(n: int, avoid: list[int] | tuple[int, ...] = ()) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports and port not in avoid:
            ports.append(port)
    return ports


def _in_thread(coro: object) -> bool:
    """Run ``coro`` to completion on a fresh event loop in another thread (callers may
    themselves be inside a running loop, e.g. an async test)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return bool(pool.submit(asyncio.run, coro).result())  # type: ignore[arg-type]


async def metadata_lists(bootstrap: str, nodes: int, *, timeout: float = 5.0, **client_kwargs: Any) -> bool:
    """Whether a Metadata request to ``bootstrap`` answers with ``nodes`` brokers and a
    controller (aiokafka, as the worker connects; ``client_kwargs``: e.g. its security)."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000),
                            metadata_max_age_ms=1000, connections_max_idle_ms=10_000, **client_kwargs)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return len(client.cluster.brokers()) >= nodes and client.cluster.controller is not None
    except Exception:
        return False
    finally:
        try:
            await client.close()
        except Exception:
            pass
