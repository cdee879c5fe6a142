"""An Apache Kafka node that asks for credentials: SASL_SSL (SCRAM-SHA-512) with a test
CA, a KRaft StandardAuthorizer and ACLs — for tests of :mod:`streams.kafka_connection`.

Built beside :mod:`streams.broker.kafka` (same pinned jars, same small-machine
settings from :func:`~streams.broker.kafka.node_properties`), not inside it: the
project's runner stays PLAINTEXT; this one overrides the listeners and adds security.

- **TLS**: :func:`make_pki` makes a CA and a broker certificate (SAN ``IP:127.0.0.1``)
  with ``openssl`` in the test's directory, plus a second, *untrusted* CA for the
  "wrong CA file" case. The broker's key store and trust store are PEM files.
- **SASL**: SCRAM-SHA-512 users are written into the metadata log when the storage is
  formatted (``StorageTool format --add-scram``), so they exist before the first client.
- **ACLs**: ``allow.everyone.if.no.acl.found=false``; ``admin`` is the super user (and
  the broker's own inter-broker principal). The CONTROLLER listener is PLAINTEXT on
  loopback, so its principal ``User:ANONYMOUS`` is a super user too: the broker's
  registration with its own controller needs ``CLUSTER_ACTION``. Clients only ever get
  the SASL_SSL address. ACLs are created with :func:`create_acls` (CreateAcls v1 through
  aiokafka's admin client: the 4.1.1 jars carry no ``kafka-acls`` tool).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.broker.ports import kill_when_parent_dies, process_listens
from streams.broker.kafka import (
    KafkaSetupError, _distinct_free_ports, _in_thread, _killpg, _read_properties, check_java, kafka_jars,
    metadata_lists, node_properties, random_cluster_id, HEAP, LOG4J2, QUICK_START_JVM,
)

MECHANISM = "SCRAM-SHA-512"

# Kafka's AclOperation / ResourceType / PatternType / AclPermissionType codes
TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID = 2, 3, 4, 5
ALL, READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE = 2, 3, 4, 5, 6, 7, 8
DESCRIBE_CONFIGS, IDEMPOTENT_WRITE = 10, 12
LITERAL, PREFIXED = 3, 4
DENY, ALLOW = 2, 3


@dataclass(frozen=True)
class Pki:
    ca: Path  #: the CA certificate clients trust (``KAFKA_SSL_CAFILE``)
    other_ca: Path  #: a CA that did not sign the broker's certificate
    keystore: Path  #: the broker's key (PKCS#8) and certificate chain, PEM


def _openssl(*args: str, cwd: Path) -> None:
    try:
        result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise KafkaSetupError("no openssl on PATH to make the test CA (apt-get install openssl)") from None
    if result.returncode != 0:
        raise KafkaSetupError(f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}")


def make_pki(directory: Path) -> Pki:
    """A test CA, a broker certificate it signs for 127.0.0.1/localhost, and another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.pem", "-days", "2", "-subj", f"/CN=order-streams test {name}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=localhost", cwd=directory)
    (directory / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                          "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.pem", "-days", "2", "-extfile", "broker.ext", cwd=directory)
    # Kafka's PEM key store: an unencrypted PKCS#8 key, then the chain
    _openssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.pk8", cwd=directory)
    keystore = directory / "broker-keystore.pem"
    keystore.write_text((directory / "broker.pk8").read_text() + (directory / "broker.pem").read_text()
                        + (directory / "ca.pem").read_text())
    return Pki(ca=directory / "ca.pem", other_ca=directory / "other-ca.pem", keystore=keystore)


def secure_properties(*, port: int, controller_port: int, log_dir: Path, pki: Pki, admin_password: str) -> str:
    """One combined node's ``server.properties``: :func:`node_properties` with a SASL_SSL
    client listener, TLS from ``pki`` and the StandardAuthorizer."""
    base = node_properties(1, port=port, controller_ports={1: controller_port}, log_dir=log_dir)
    settings: dict[str, Any] = {}
    for line in base.splitlines():
        key, _, value = line.partition("=")
        settings[key] = value
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
            f'password="{admin_password}";')
    settings.update({
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": pki.keystore,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": pki.ca,
        "ssl.client.auth": "none",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:admin;User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    })
    return "".join(f"{k}={v}\n" for k, v in settings.items())


class SecureKafka:
    """One SASL_SSL Apache Kafka node with ACLs on loopback; :meth:`stop` ends its JVM."""

    def __init__(self, data_dir: Path, users: tuple[str, ...]) -> None:
        self.data_dir = data_dir
        #: SCRAM-SHA-512 user → password (``admin`` is the super user)
        self.passwords = {name: secrets.token_urlsafe(18) for name in ("admin", *users)}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pki: Pki | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return "kafka://" + self.bootstrap

    def env(self, user: str, *, password: str | None = None, cafile: Path | None = None) -> dict[str, str]:
        """The settings a process connects with as ``user`` (as a deployment sets them)."""
        assert self.pki is not None
        return {"KAFKA_BROKER": self.url, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": MECHANISM, "KAFKA_SASL_USERNAME": user,
                "KAFKA_SASL_PASSWORD": self.passwords[user] if password is None else password,
                "KAFKA_SSL_CAFILE": str(cafile or self.pki.ca)}

    def client_kwargs(self, user: str = "admin") -> dict[str, Any]:
        """aiokafka keyword arguments for ``user`` (``bootstrap_servers`` included)."""
        from streams.kafka_connection import KafkaConnection

        sec = KafkaConnection(**{k.lower(): v for k, v in self.env(user).items() if k != "KAFKA_BROKER"})
        return {"bootstrap_servers": self.bootstrap, **sec.aiokafka_kwargs()}

    def start(self, timeout: float = 120.0) -> "SecureKafka":
        java = check_java()
        libs = kafka_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.data_dir / "pki")
        self.port, controller_port = _distinct_free_ports(2)
        (self.data_dir / "log4j2.properties").write_text(LOG4J2.format(level="WARN"))
        config = self.data_dir / "server.properties"
        config.write_text(secure_properties(port=self.port, controller_port=controller_port,
                                            log_dir=self.data_dir / "logs", pki=self.pki,
                                            admin_password=self.passwords["admin"]))
        jvm = [java, *HEAP, *QUICK_START_JVM, "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}", "-cp", str(libs / "*")]
        scram = [a for name, pw in self.passwords.items()
                 for a in ("--add-scram", f"{MECHANISM}=[name={name},password={pw}]")]
        fmt = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "-t", random_cluster_id(),
                              "-c", str(config), *scram], capture_output=True, text=True, timeout=120)
        if fmt.returncode != 0:
            raise KafkaSetupError(f"formatting secure Kafka storage failed: {(fmt.stdout + fmt.stderr).strip()[-300:]}")
        log = open(self.data_dir / "node.out", "ab")
        try:
            # its own process group, and SIGKILLed when the test process dies (even by SIGKILL)
            self.proc = subprocess.Popen([*jvm, "kafka.Kafka", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=kill_when_parent_dies())
        finally:
            log.close()
        try:
            deadline = time.monotonic() + timeout
            while not (process_listens(self.proc.pid, self.port) is not False
                       and _in_thread(self._metadata_answers())):
                if self.proc.poll() is not None:
                    raise KafkaSetupError(f"secure Kafka exited with {self.proc.returncode}: see "
                                          f"{self.data_dir / 'node.out'}")
                if time.monotonic() > deadline:
                    raise KafkaSetupError(f"secure Kafka did not answer in {timeout}s: see {self.data_dir / 'node.out'}")
                time.sleep(0.3)
        except BaseException:
            self.stop()
            raise
        return self

    async def _metadata_answers(self) -> bool:
        """The runner's readiness check, over this broker's SASL_SSL listener as admin."""
        kwargs = self.client_kwargs("admin")
        return await metadata_lists(kwargs.pop("bootstrap_servers"), 1, **kwargs)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _killpg(proc, 15, group=False)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        _killpg(proc, 9)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    def properties(self) -> dict[str, str]:
        return _read_properties(self.data_dir / "server.properties")


Acl = tuple[int, str, int, str, int, int]  # resource type, name, pattern, principal, operation, permission


async def _admin(kafka: SecureKafka) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.client_kwargs("admin"))
    await admin.start()
    return admin


def _batch(request_class: Any, rows: list[tuple[Any, ...]]) -> Any:
    """``request_class`` (CreateAcls/DeleteAcls) carrying every row at once, at v1+
    (the rows carry a pattern type, which v0 lacks; Kafka 4 accepts v1..v3)."""

    class Batch(request_class):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            pass

        def build(self, request_struct_class: Any) -> Any:
            assert request_struct_class.API_VERSION >= 1, "the broker offers only v0"
            return request_struct_class(rows)

    return Batch()


async def create_acls(kafka: SecureKafka, acls: list[Acl]) -> None:
    """CreateAcls as ``admin``; any error in the answer raises."""
    from aiokafka.protocol.admin import CreateAclsRequest

    admin = await _admin(kafka)
    try:
        request = _batch(CreateAclsRequest, [(rt, name, pattern, principal, "*", op, perm)
                                             for rt, name, pattern, principal, op, perm in acls])
        response = await admin._client.send(admin._client.get_random_node(), request)
        errors = [(acls[i], code, msg) for i, (code, msg) in enumerate(response.creation_responses) if code]
        if errors:
            raise AssertionError(f"CreateAcls refused: {errors}")
    finally:
        await admin.close()
    await acls_in_effect(kafka, acls)


async def delete_acls(kafka: SecureKafka, acls: list[Acl]) -> None:
    """DeleteAcls (exact filters) as ``admin``."""
    from aiokafka.protocol.admin import DeleteAclsRequest

    admin = await _admin(kafka)
    try:
        request = _batch(DeleteAclsRequest, [(rt, name, pattern, principal, "*", op, perm)
                                             for rt, name, pattern, principal, op, perm in acls])
        response = await admin._client.send(admin._client.get_random_node(), request)
        codes = [r[0] for r in response.filter_responses]
        if any(codes):
            raise AssertionError(f"DeleteAcls refused: {codes}")
    finally:
        await admin.close()
    await acls_in_effect(kafka, acls, present=False)


async def acls_in_effect(kafka: SecureKafka, acls: list[Acl], *, present: bool = True,
                         timeout: float = 30.0) -> None:
    """Until the broker lists every one of ``acls`` (or, ``present=False``, none of them)
    in DescribeAcls: its authorizer then decides with them (CreateAcls answers once the
    controller has them; the broker applies them when it reads the metadata log)."""
    from aiokafka.protocol.admin import DescribeAclsRequest

    want = set(acls)
    admin = await _admin(kafka)
    try:
        deadline = time.monotonic() + timeout
        while True:
            any_ = 1  # ResourceType / PatternType / AclOperation / AclPermissionType ANY
            request = DescribeAclsRequest(any_, None, any_, None, None, any_, any_)  # type: ignore[arg-type]
            response = await admin._client.send(admin._client.get_random_node(), request)
            listed = {(rt, name, pattern, principal, op, perm)
                      for rt, name, pattern, entries in response.resources
                      for principal, _host, op, perm in entries}
            if (want <= listed) if present else not (want & listed):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"ACLs not {'in' if present else 'out of'} effect after {timeout}s: "
                                     f"{sorted(want - listed) if present else sorted(want & listed)}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def grant(principal: str, resource_type: int, name: str, *operations: int, pattern: int = LITERAL) -> list[Acl]:
    return [(resource_type, name, pattern, f"User:{principal}", op, ALLOW) for op in operations]


async def create_topics(kafka: SecureKafka, names: set[str], partitions: int = 4) -> None:
    """Create ``names`` as ``admin`` (as an operator does before the services start)."""
    from aiokafka.admin import NewTopic

    admin = await _admin(kafka)
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in sorted(names - existing)]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def read_all(kafka: SecureKafka, topic: str, *, until: Any, timeout: float = 60.0,
                   user: str = "admin", isolation_level: str = "read_uncommitted") -> list[Any]:
    """Records of ``topic`` from the beginning, as ``user``, until ``until(records)``
    holds (AssertionError with what was read after ``timeout``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.client_kwargs(user), enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                isolation_level=isolation_level)
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while not consumer.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: no partitions")
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not until(out):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: condition not met in {timeout}s; read {len(out)} records")
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()


async def committed(kafka: SecureKafka, topic: str, group: str) -> dict[int, int]:
    """``group``'s committed offset per partition of ``topic`` (admin's view)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.client_kwargs("admin"), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        return {p: (await consumer.committed(TopicPartition(topic, p)) or 0) for p in sorted(parts)}
    finally:
        await consumer.stop()
