#!/usr/bin/env bash
# A production Kafka node (deploy/production.yml): its SCRAM users exist before any
# client connects, then the image's own start-up runs unchanged.
#
# KRaft keeps SCRAM credentials in the cluster metadata; the one way to have them
# before the first connection (the brokers' own included) is to add them when the
# storage is formatted. So: render the broker's properties as the image does, format
# with --add-scram (a no-op on storage formatted before), write the broker's JAAS
# login and the health check's client properties, and exec the image's `run`, whose
# own format step finds the storage formatted.
set -euo pipefail

for name in SCRAM_ADMIN_PASSWORD SCRAM_WORKER_PASSWORD SCRAM_RELAY_PASSWORD; do
  if [[ ! "${!name:-}" =~ ^[A-Za-z0-9]{16,}$ ]]; then
    echo "kafka-start: $name must be set to 16 or more letters and digits" >&2
    exit 1
  fi
done

umask 077
cat > /tmp/kafka_server_jaas.conf <<JAAS
KafkaServer {
  org.apache.kafka.common.security.scram.ScramLoginModule required
  username="admin" password="${SCRAM_ADMIN_PASSWORD}";
};
JAAS
cat > /tmp/admin-client.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${SCRAM_ADMIN_PASSWORD}";
ssl.truststore.location=/etc/kafka/secrets/${KAFKA_SSL_TRUSTSTORE_FILENAME}
ssl.truststore.type=${KAFKA_SSL_TRUSTSTORE_TYPE}
ssl.truststore.password=$(cat "/etc/kafka/secrets/${KAFKA_SSL_TRUSTSTORE_CREDENTIALS}")
PROPS

(
  . /etc/kafka/docker/bash-config
  . /etc/kafka/docker/configureDefaults
  /etc/kafka/docker/configure
) > /dev/null
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" \
  --config /opt/kafka/config/server.properties \
  --add-scram "SCRAM-SHA-512=[name=admin,password=${SCRAM_ADMIN_PASSWORD}]" \
  --add-scram "SCRAM-SHA-512=[name=worker,password=${SCRAM_WORKER_PASSWORD}]" \
  --add-scram "SCRAM-SHA-512=[name=relay,password=${SCRAM_RELAY_PASSWORD}]"
unset SCRAM_ADMIN_PASSWORD SCRAM_WORKER_PASSWORD SCRAM_RELAY_PASSWORD
exec /etc/kafka/docker/run
