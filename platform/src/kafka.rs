//! Kafka client settings, topic creation, and the embedded mock cluster.
//!
//! Every service builds its clients from one [`KafkaConfig`], so producer and
//! consumer settings cannot drift. The broker is either external
//! (`KAFKA_BROKERS`) or librdkafka's mock cluster, which `ledgerctl dev` and
//! the tests host in-process and reach over TCP like any broker.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::mocking::MockCluster;
use schemas::Topics;

use crate::config::{self, ConfigError};

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BROKERS`: the bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topic names (`LEDGERLINE_TOPIC_NAMESPACE` prefixes them).
    pub topics: Topics,
    /// `LEDGERLINE_KAFKA_PRODUCE_TIMEOUT_MS`: how long a produce may take,
    /// retries included, before it fails (librdkafka's `message.timeout.ms`).
    pub produce_timeout_ms: u64,
    /// `LEDGERLINE_KAFKA_SESSION_TIMEOUT_MS`: a consumer silent for this long
    /// leaves its group and its partitions move to another member.
    pub session_timeout_ms: u64,
    /// `LEDGERLINE_KAFKA_FETCH_WAIT_MAX_MS`: how long a broker may hold a
    /// fetch that finds nothing new (librdkafka's `fetch.wait.max.ms`). A
    /// real broker answers as soon as a message arrives, so this only
    /// bounds idle fetches; the mock cluster answers no fetch early, so
    /// there it is the latency every consumer hop adds (see
    /// [`MockKafka::kafka_config`]).
    pub fetch_wait_max_ms: u64,
    /// `LEDGERLINE_RDKAFKA_*`: librdkafka properties for every client
    /// (security: SASL/SCRAM, SSL), see [`ClientProperties::from_env`].
    pub client_properties: ClientProperties,
}

/// The prefix of the variables passed to librdkafka as they are.
pub const CLIENT_PROPERTY_PREFIX: &str = "LEDGERLINE_RDKAFKA_";

/// librdkafka properties from the environment, applied to every producer,
/// consumer and admin client: how a deployment sets Kafka's security
/// (`security.protocol`, `sasl.mechanisms`, `sasl.username`,
/// `sasl.password`, `ssl.ca.location`, …) without a setting of ours per
/// property. `LEDGERLINE_RDKAFKA_SASL_PASSWORD=…` is `sasl.password`: the
/// name after the prefix, lower-cased, `_` as `.`. Each may come from a file
/// instead (`…_FILE`), as every secret may. Values are kept secret: the
/// `Debug` form names the properties only. Our own settings win over a
/// property that names the same thing (`enable.idempotence`, `acks`, …).
#[derive(Clone, Default)]
pub struct ClientProperties(Vec<(String, secrecy::SecretString)>);

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

/// The librdkafka property a variable names (after the prefix):
/// `SASL_PASSWORD` is `sasl.password`.
fn property_name(suffix: &str) -> String {
    suffix.to_ascii_lowercase().replace('_', ".")
}

impl ClientProperties {
    /// Every `LEDGERLINE_RDKAFKA_*` variable (and `…_FILE`).
    ///
    /// # Errors
    /// When a name is empty, a variable is not UTF-8, or a file cannot be read.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter_map(|name| name.strip_prefix(CLIENT_PROPERTY_PREFIX).map(str::to_owned))
            .map(|name| name.strip_suffix("_FILE").map(str::to_owned).unwrap_or(name))
            .collect();
        names.sort();
        names.dedup();
        let mut properties = Vec::new();
        for name in names {
            let variable = format!("{CLIENT_PROPERTY_PREFIX}{name}");
            if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                return Err(ConfigError::new(&variable, "is not a librdkafka property name"));
            }
            if let Some(value) = config::secret_optional(&variable)? {
                properties.push((property_name(&name), value));
            }
        }
        Ok(Self(properties))
    }

    /// The property names, for the logs.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn apply(&self, config: &mut ClientConfig) {
        use secrecy::ExposeSecret as _;
        for (name, value) in &self.0 {
            config.set(name, value.expose_secret());
        }
    }
}

/// [`KafkaConfig::fetch_wait_max_ms`] on a real broker: librdkafka's 500 ms
/// default, lowered so a consumer notices a stopped broker sooner.
pub const FETCH_WAIT_MAX_MS_DEFAULT: u64 = 100;
/// [`KafkaConfig::fetch_wait_max_ms`] on the mock cluster: a few
/// milliseconds per consumer hop instead of up to a hundred, for some
/// hundred idle fetches a second per consumer (in-process, cheap).
pub const MOCK_FETCH_WAIT_MAX_MS: u64 = 5;

impl KafkaConfig {
    /// Settings for an explicit broker list and the default limits.
    #[must_use]
    pub fn new(brokers: impl Into<String>, topics: Topics) -> Self {
        Self {
            brokers: brokers.into(),
            topics,
            produce_timeout_ms: 10_000,
            session_timeout_ms: 10_000,
            fetch_wait_max_ms: FETCH_WAIT_MAX_MS_DEFAULT,
            client_properties: ClientProperties::default(),
        }
    }

    /// # Errors
    /// When a variable is malformed or out of range. `KAFKA_BROKERS` may be
    /// unset: the caller decides whether to host a mock cluster instead.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(brokers) = config::var_optional::<String>("KAFKA_BROKERS")? else {
            return Ok(None);
        };
        let mut kafka = Self::new(brokers, Self::topics_from_env()?);
        kafka.produce_timeout_ms =
            config::limit("LEDGERLINE_KAFKA_PRODUCE_TIMEOUT_MS", kafka.produce_timeout_ms, 100..=300_000)?;
        kafka.session_timeout_ms =
            config::limit("LEDGERLINE_KAFKA_SESSION_TIMEOUT_MS", kafka.session_timeout_ms, 1_000..=300_000)?;
        kafka.fetch_wait_max_ms =
            config::limit("LEDGERLINE_KAFKA_FETCH_WAIT_MAX_MS", kafka.fetch_wait_max_ms, 1..=10_000)?;
        kafka.client_properties = ClientProperties::from_env()?;
        Ok(Some(kafka))
    }

    /// The topic names, namespaced by `LEDGERLINE_TOPIC_NAMESPACE` if set.
    ///
    /// # Errors
    /// When the variable is not valid UTF-8.
    pub fn topics_from_env() -> Result<Topics, ConfigError> {
        let namespace: String = config::var_or("LEDGERLINE_TOPIC_NAMESPACE", String::new())?;
        Ok(Topics::namespaced(&namespace))
    }

    /// A client of the brokers with the deployment's librdkafka properties
    /// (security), before the settings of a producer or a consumer.
    #[must_use]
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        self.client_properties.apply(&mut config);
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// An idempotent producer: acks from all in-sync replicas, and no
    /// duplicates or reordering from its own retries.
    #[must_use]
    pub fn producer(&self) -> ClientConfig {
        let mut config = self.client();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", self.produce_timeout_ms.to_string())
            // librdkafka batches what queues while its requests are in
            // flight anyway; a millisecond more gathers a little at low
            // rates, where 5 ms was half of an HTTP answer's time.
            .set("linger.ms", "1");
        config
    }

    /// A consumer in `group` that never commits on its own: the processor
    /// keeps its offsets in Postgres and commits to Kafka only for
    /// visibility, after its database commit.
    #[must_use]
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut config = self.client();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Partitions are always assigned at an explicit position (the
            // offset stored in Postgres, or the beginning). If that position
            // is gone from the log (retention deleted commands never
            // applied), resetting would skip them silently: fail loudly.
            .set("auto.offset.reset", "error")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string());
        config
    }

    /// Creates the topics with the AdminClient, leaving existing ones as they
    /// are. For real brokers: the mock cluster has no CreateTopics handler
    /// (use [`MockKafka::start`], which creates them itself).
    ///
    /// # Errors
    /// When the broker cannot be reached or refuses a topic.
    pub async fn create_topics(&self, command_partitions: i32, replication: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            self.client().create().context("creating the Kafka admin client")?;
        let partitions = self.topics.with_partition_counts(command_partitions);
        let new_topics: Vec<NewTopic<'_>> = partitions
            .iter()
            .map(|(name, count)| {
                let topic = NewTopic::new(name, *count, TopicReplication::Fixed(replication));
                if *name == self.topics.commands {
                    // The processor decides hold expiry against a command's
                    // timestamp in the log: the broker's clock, not a
                    // producer's that could backdate a post.
                    topic.set("message.timestamp.type", "LogAppendTime")
                } else {
                    topic
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics(&new_topics, &options).await.context("creating topics")?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic = %name, "topic exists");
                }
                Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
            }
        }
        Ok(())
    }
}

/// librdkafka's mock cluster, hosted on a thread of its own (its handle is
/// not `Send`) and reachable over TCP on 127.0.0.1 by any Kafka client.
/// Dropping it stops the cluster.
#[derive(Debug)]
pub struct MockKafka {
    bootstrap_servers: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockKafka {
    /// Starts a cluster of `broker_count` brokers and creates the topics.
    ///
    /// # Errors
    /// When librdkafka cannot create the cluster or a topic.
    pub fn start(broker_count: i32, topics: &Topics, command_partitions: i32) -> anyhow::Result<Self> {
        let partitions: Vec<(String, i32)> = topics
            .with_partition_counts(command_partitions)
            .into_iter()
            .map(|(name, count)| (name.to_owned(), count))
            .collect();
        let (ready_sender, ready) = mpsc::channel::<anyhow::Result<String>>();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kafka-mock-cluster".into())
            .spawn(move || {
                let cluster = match MockCluster::new(broker_count) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_sender.send(Err(anyhow::Error::new(error).context("starting the mock cluster")));
                        return;
                    }
                };
                for (name, count) in &partitions {
                    if let Err(error) = cluster.create_topic(name, *count, 1) {
                        let _ = ready_sender.send(Err(anyhow::anyhow!("creating mock topic {name}: {error}")));
                        return;
                    }
                }
                let _ = ready_sender.send(Ok(cluster.bootstrap_servers()));
                // Block until told to stop, or until the handle is gone.
                let _ = stopped.recv();
                drop(cluster);
            })
            .context("spawning the mock cluster thread")?;
        let bootstrap_servers = ready.recv().context("the mock cluster thread died")??;
        Ok(Self { bootstrap_servers, stop: Some(stop), thread: Some(thread) })
    }

    /// The `host:port` list a client connects to.
    #[must_use]
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Settings for this cluster: the defaults, but with
    /// [`MOCK_FETCH_WAIT_MAX_MS`], since the mock holds every fetch that
    /// finds nothing for its whole wait, even when a message arrives
    /// meanwhile.
    #[must_use]
    pub fn kafka_config(&self, topics: Topics) -> KafkaConfig {
        let mut kafka = KafkaConfig::new(self.bootstrap_servers(), topics);
        kafka.fetch_wait_max_ms = MOCK_FETCH_WAIT_MAX_MS;
        kafka
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One message of a topic, as read back by an operator's tool.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker or producer time, ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl ReadMessage {
    /// A header's value as text (lossy).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }
}

/// What [`KafkaConfig::read_range`] found.
#[derive(Debug)]
pub struct ReadRange {
    /// How many partitions the topic has.
    pub partitions: i32,
    pub messages: Vec<ReadMessage>,
    /// The first offset read: the one asked for, moved up to the oldest kept.
    pub start: i64,
    /// The offset after the newest message when the read began.
    pub end: i64,
}

/// Why a range could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the topic has {partitions} partition(s)")]
    NoSuchPartition { partitions: i32 },
    #[error(transparent)]
    Kafka(#[from] anyhow::Error),
}

impl KafkaConfig {
    /// Reads up to `limit` messages of `topic`'s `partition` from
    /// `from_offset` (the oldest kept when absent) up to the end as it was
    /// when the read began, without joining a group or committing anything,
    /// within `timeout`. Blocking: call it from a blocking thread.
    ///
    /// # Errors
    /// An unknown partition, a broker that does not answer in time.
    pub fn read_range(
        &self,
        topic: &str,
        partition: i32,
        from_offset: Option<i64>,
        limit: i64,
        timeout: Duration,
    ) -> Result<ReadRange, ReadError> {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        use rdkafka::message::{Headers as _, Message as _};
        use rdkafka::{Offset, TopicPartitionList};

        let deadline = std::time::Instant::now() + timeout;
        let consumer: BaseConsumer = self
            .consumer(&format!("ledgerline-reader-{}", uuid::Uuid::new_v4()))
            .create()
            .context("creating a topic reader")?;
        let metadata = consumer.fetch_metadata(Some(topic), timeout).context("reading the topic's metadata")?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|found| found.name() == topic)
            .map_or(0, |found| i32::try_from(found.partitions().len()).unwrap_or(i32::MAX));
        if !(0..partitions).contains(&partition) {
            return Err(ReadError::NoSuchPartition { partitions });
        }
        let (low, high) =
            consumer.fetch_watermarks(topic, partition, timeout).context("reading the partition's offsets")?;
        let start = from_offset.unwrap_or(low).max(low);
        let end = high.min(start.saturating_add(limit));
        let mut messages: Vec<ReadMessage> = Vec::new();
        if start < end {
            let mut assignment = TopicPartitionList::new();
            assignment.add_partition_offset(topic, partition, Offset::Offset(start)).context("assigning")?;
            consumer.assign(&assignment).context("assigning the partition")?;
            while messages.last().is_none_or(|message| message.offset + 1 < end) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(anyhow::anyhow!("reading {topic} took over {} ms", timeout.as_millis()).into());
                }
                // Short polls: a range may end in a gap (a transaction
                // marker, a compacted record), after which no message comes;
                // the consumer's position says when the end is passed.
                let Some(message) = consumer.poll(left.min(Duration::from_millis(200))) else {
                    let position = consumer.position().ok().and_then(|list| {
                        list.find_partition(topic, partition).and_then(|element| element.offset().to_raw())
                    });
                    if position.is_some_and(|next| next >= end) {
                        break;
                    }
                    continue;
                };
                let message = message.context("reading a message")?;
                if message.offset() >= end {
                    break;
                }
                messages.push(ReadMessage {
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|header| (header.key.to_owned(), header.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    timestamp_ms: message.timestamp().to_millis(),
                });
            }
        }
        Ok(ReadRange { partitions, messages, start, end: high })
    }
}

/// The headers of a command published again (a replay): the original ones
/// (the transfer id, the first request's id) minus dead-letter and earlier
/// replay markers (the processor adds fresh ones if it refuses it again),
/// plus `ledgerline-replayed-from` naming where it was read and
/// `ledgerline-replay-id` naming the replay.
#[must_use]
pub fn replay_headers(message: &ReadMessage, from: &str, replay_id: &str) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::{Header, OwnedHeaders};
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: REPLAYED_FROM_HEADER, value: Some(from) })
        .insert(Header { key: "ledgerline-replay-id", value: Some(replay_id) });
    for (key, value) in &message.headers {
        let dropped = key.starts_with("ledgerline-dlq-")
            || key.starts_with("ledgerline-source-")
            || key.starts_with("ledgerline-replay");
        if !dropped {
            headers = headers.insert(Header { key: key.as_str(), value: Some(value.as_slice()) });
        }
    }
    headers
}

/// Where a replayed command was read: `<topic>:<partition>:<offset>`.
pub const REPLAYED_FROM_HEADER: &str = "ledgerline-replayed-from";

/// Publishes `messages` (read from `source_topic`'s `partition`) again to
/// `topic`, as they were: same key, same bytes, the original headers with
/// [`replay_headers`]. Sent together; the producer keeps their order per
/// partition. The offsets published, or the first error after trying all.
///
/// # Errors
/// When the broker does not take one of them within `timeout`.
pub async fn republish(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    source_topic: &str,
    partition: i32,
    messages: &[ReadMessage],
    replay_id: &str,
    timeout: Duration,
) -> (Vec<i64>, Option<anyhow::Error>) {
    use rdkafka::producer::FutureRecord;
    let sends = messages.iter().map(|message| {
        let from = format!("{source_topic}:{partition}:{}", message.offset);
        let headers = replay_headers(message, &from, replay_id);
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).payload(message.payload.as_slice()).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        producer.send(record, timeout)
    });
    let results = futures::future::join_all(sends).await;
    let mut published = Vec::with_capacity(results.len());
    let mut first_error = None;
    for (message, result) in messages.iter().zip(results) {
        match result {
            Ok(_) => published.push(message.offset),
            Err((error, _)) => {
                first_error.get_or_insert_with(|| anyhow::Error::new(error).context("republishing"));
            }
        }
    }
    (published, first_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variable_names_its_property_and_values_stay_out_of_the_logs() {
        assert_eq!(property_name("SECURITY_PROTOCOL"), "security.protocol");
        assert_eq!(property_name("SASL_PASSWORD"), "sasl.password");
        let properties = ClientProperties(vec![
            ("sasl.username".into(), secrecy::SecretString::from("ledgerline".to_owned())),
            ("sasl.password".into(), secrecy::SecretString::from("hunter2-hunter2".to_owned())),
        ]);
        let shown = format!("{properties:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("hunter2"), "{shown}");
        let mut config = KafkaConfig::new("127.0.0.1:9092", Topics::namespaced(""));
        config.client_properties = properties;
        let producer = config.producer();
        assert_eq!(producer.get("sasl.password"), Some("hunter2-hunter2"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"), "ours win");
    }
}
