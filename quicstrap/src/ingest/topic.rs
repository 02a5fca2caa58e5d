//! How a partition's change-log topic is named: a template over `{store}` and `{version}`
//! (validated, so two stores can never share a topic by mistake); the Kafka partition is the
//! partition number.

use crate::store::partition::PartitionId;

/// How change-log topics are named: a template over `{store}` and `{version}`; the Kafka
/// partition is the partition number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate(String);

impl Default for TopicTemplate {
    fn default() -> Self {
        Self("{store}_v{version}".into())
    }
}

impl std::str::FromStr for TopicTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.replace("{store}", "").replace("{version}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(format!(
                "{s:?}: only {{store}} and {{version}} may be substituted"
            ));
        }
        if !s.contains("{store}") {
            return Err(format!(
                "{s:?}: must contain {{store}}, or every store would share one topic"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TopicTemplate {
    /// The topic of `id`'s store version.
    pub fn topic(&self, id: &PartitionId) -> String {
        self.0
            .replace("{store}", &id.store)
            .replace("{version}", &id.version.to_string())
    }
}

/// The Kafka topic of a store version under the default template, `<store>_v<version>`.
pub fn topic(id: &PartitionId) -> String {
    TopicTemplate::default().topic(id)
}
