package orderstreams.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The notifications contract in Kafka Streams (Processor API), the reference our worker is
 * compared with by {@code make bench}: each OrderPaid of the source topic is deduplicated by
 * its record key against a persistent RocksDB key-value store with a changelog; a new key is
 * validated, handed to a log-only notifier and answered with a NotificationSent JSON record
 * on the sink topic (producer acks=all); markers older than the TTL are removed by a
 * stream-time punctuation. One stream thread.
 *
 * <p>Runs until {@code --expect-distinct} notifications were forwarded, then closes (which
 * flushes the producer and commits) and prints one JSON line: seconds from the first
 * record processed to the end of the close, the process CPU seconds over that span, and
 * the counts.
 */
public final class NotificationsDedup {
  static final String STORE = "notifications-dedup";
  static final ObjectMapper JSON = new ObjectMapper();
  static final Logger NOTIFIER = LoggerFactory.getLogger("notifier");

  static final AtomicLong consumed = new AtomicLong();
  static final AtomicLong forwarded = new AtomicLong();
  static final AtomicLong invalid = new AtomicLong();
  static final AtomicLong firstAtNanos = new AtomicLong();
  static final AtomicLong firstCpuNanos = new AtomicLong(-1);

  public static void main(String[] argv) throws Exception {
    Map<String, String> a = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      a.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
    }
    String source = a.getOrDefault("source", "events.order.paid.v1");
    String sink = a.getOrDefault("sink", "events.notification.sent.v1");
    long expect = Long.parseLong(a.get("expect-distinct"));
    long ttlMs = Long.parseLong(a.getOrDefault("ttl-ms", "86400000"));
    long timeoutS = Long.parseLong(a.getOrDefault("timeout-s", "900"));
    CountDownLatch done = new CountDownLatch(1);

    Topology topology = new Topology();
    topology.addSource("paid", new ByteArrayDeserializer(), new ByteArrayDeserializer(), source);
    topology.addProcessor("dedup", () -> new Dedup(ttlMs, expect, done), "paid");
    topology.addStateStore(
        Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(STORE), Serdes.ByteArray(), Serdes.Long())
            .withLoggingEnabled(Map.of()),
        "dedup");
    topology.addSink("sent", sink, new ByteArraySerializer(), new ByteArraySerializer(), "dedup");

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, a.getOrDefault("app-id", "notifications-kstreams"));
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, a.getOrDefault("guarantee", "at_least_once"));
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    p.put(StreamsConfig.STATE_DIR_CONFIG, a.get("state-dir"));
    p.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    if (a.containsKey("commit-interval-ms")) {
      p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(a.get("commit-interval-ms")));
    }

    KafkaStreams streams = new KafkaStreams(topology, p);
    long startedAt = System.nanoTime();
    streams.start();
    boolean finished = done.await(timeoutS, TimeUnit.SECONDS);
    long latched = System.nanoTime();
    streams.close(Duration.ofSeconds(120)); // flushes every forward (acks=all) and commits
    long end = System.nanoTime();
    long cpuEnd = processCpuNanos();
    long first = firstAtNanos.get();
    Map<String, Object> out = new HashMap<>();
    out.put("timed_out", !finished);
    out.put("seconds", (end - first) / 1e9);
    out.put("cpu_seconds", (cpuEnd - firstCpuNanos.get()) / 1e9);
    out.put("start_to_first_record_s", (first - startedAt) / 1e9);
    out.put("last_forward_s", (latched - first) / 1e9);
    out.put("close_s", (end - latched) / 1e9);
    out.put("events", consumed.get());
    out.put("forwarded", forwarded.get());
    out.put("invalid", invalid.get());
    out.put("guarantee", p.get(StreamsConfig.PROCESSING_GUARANTEE_CONFIG));
    out.put("kafka_streams", org.apache.kafka.common.utils.AppInfoParser.getVersion());
    System.out.println(JSON.writeValueAsString(out));
    System.exit(finished ? 0 : 2);
  }

  static long processCpuNanos() {
    return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
        .getProcessCpuTime();
  }

  /** Dedup by record key; forward NotificationSent for a key not seen within the TTL. */
  static final class Dedup implements Processor<byte[], byte[], byte[], byte[]> {
    private final long ttlMs;
    private final long expect;
    private final CountDownLatch done;
    private ProcessorContext<byte[], byte[]> context;
    private KeyValueStore<byte[], Long> store;

    Dedup(long ttlMs, long expect, CountDownLatch done) {
      this.ttlMs = ttlMs;
      this.expect = expect;
      this.done = done;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
      this.context = context;
      this.store = context.getStateStore(STORE);
      // expiry as the worker's TTL: by stream time, not the wall clock
      context.schedule(Duration.ofSeconds(10), PunctuationType.STREAM_TIME, this::expire);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
      if (consumed.getAndIncrement() == 0) {
        firstAtNanos.set(System.nanoTime());
        firstCpuNanos.set(processCpuNanos());
      }
      byte[] key = record.key();
      if (key == null || record.value() == null) {
        invalid.incrementAndGet();
        return;
      }
      Long seen = store.get(key);
      if (seen != null && record.timestamp() - seen <= ttlMs) {
        return; // duplicate
      }
      JsonNode paid;
      try {
        paid = JSON.readTree(record.value());
      } catch (Exception e) {
        invalid.incrementAndGet();
        return;
      }
      String orderId = new String(key, StandardCharsets.UTF_8);
      if (!paid.isObject()
          || !orderId.equals(paid.path("order_id").asText(null))
          || !paid.path("user_id").isTextual()
          || !(paid.path("amount").isNumber() || paid.path("amount").isTextual())
          || !"v1".equals(paid.path("version").asText("v1"))) {
        invalid.incrementAndGet();
        return;
      }
      String userId = paid.get("user_id").asText();
      NOTIFIER.debug("sms to {} for order {}", userId, orderId); // the log-only notifier
      ObjectNode sent = JSON.createObjectNode();
      sent.put("version", "v1");
      sent.put("event_id", UUID.nameUUIDFromBytes(("notification:" + orderId).getBytes(StandardCharsets.UTF_8)).toString());
      sent.put("occurred_at", Instant.now().toString());
      sent.put("order_id", orderId);
      sent.put("user_id", userId);
      sent.put("channel", "log");
      sent.put("causation_id", paid.path("event_id").asText(""));
      try {
        context.forward(record.withValue(JSON.writeValueAsBytes(sent)));
      } catch (Exception e) {
        throw new RuntimeException(e);
      }
      store.put(key, record.timestamp());
      if (forwarded.incrementAndGet() == expect) {
        done.countDown();
      }
    }

    private void expire(long streamTime) {
      try (KeyValueIterator<byte[], Long> it = store.all()) {
        while (it.hasNext()) {
          KeyValue<byte[], Long> kv = it.next();
          if (kv.value + ttlMs <= streamTime) {
            store.delete(kv.key);
          }
        }
      }
    }
  }
}
