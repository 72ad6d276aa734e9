//! Kafka topic names.
//!
//! Production uses the plain names. Tests that share one external broker
//! give every test its own namespace, so topics never collide.

/// Commands for the processor, keyed by source account.
pub const COMMANDS: &str = "ledger.commands";
/// Commands the processor could not decode or validate, with the reason in headers.
pub const COMMANDS_DLQ: &str = "ledger.commands.dlq";
/// Lifecycle events published by the outbox relay, keyed by account.
pub const EVENTS: &str = "ledger.events";

/// The set of topic names one deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub commands_dlq: String,
    pub events: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self { commands: COMMANDS.to_owned(), commands_dlq: COMMANDS_DLQ.to_owned(), events: EVENTS.to_owned() }
    }
}

impl Topics {
    /// The standard names behind a namespace (`"{namespace}.ledger.commands"`),
    /// or the standard names themselves when the namespace is empty.
    #[must_use]
    pub fn namespaced(namespace: &str) -> Self {
        if namespace.is_empty() {
            return Self::default();
        }
        Self {
            commands: format!("{namespace}.{COMMANDS}"),
            commands_dlq: format!("{namespace}.{COMMANDS_DLQ}"),
            events: format!("{namespace}.{EVENTS}"),
        }
    }

    /// Every topic with the partition count it is created with.
    #[must_use]
    pub fn with_partition_counts(&self, command_partitions: i32) -> Vec<(&str, i32)> {
        vec![
            (self.commands.as_str(), command_partitions),
            (self.commands_dlq.as_str(), 1),
            (self.events.as_str(), command_partitions),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_namespace_gives_the_standard_names() {
        assert_eq!(Topics::namespaced(""), Topics::default());
        assert_eq!(Topics::default().commands, "ledger.commands");
    }

    #[test]
    fn a_namespace_prefixes_every_topic() {
        let topics = Topics::namespaced("t42");
        assert_eq!(topics.commands, "t42.ledger.commands");
        assert_eq!(topics.commands_dlq, "t42.ledger.commands.dlq");
        assert_eq!(topics.events, "t42.ledger.events");
    }
}
