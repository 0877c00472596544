//! Event and command type names: `NounVerbPastTense` for events (`ArtifactCreated`),
//! `VerbNoun` for commands (`AssignAgentTask`), optionally suffixed `V<n>` after a breaking change.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::EnvelopeError;

/// Whether a message is an event (a fact, many subscribers) or a command (one handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A fact that happened: `NounVerbPastTense`.
    #[default]
    Event,
    /// A request to one handler: `VerbNoun`; never on the public stream.
    Command,
}

impl MessageKind {
    /// `event` or `command`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Event => "event",
            MessageKind::Command => "command",
        }
    }
}

/// Irregular past forms (and the state adjective `Ready`, used by the seed's catalog:
/// `ChunksReady`, `WorkflowStepReady`) accepted as the last word of an event name.
const IRREGULAR_PAST: &[&str] = &[
    "Ready",
    "Built",
    "Rebuilt",
    "Sent",
    "Made",
    "Paid",
    "Held",
    "Upheld",
    "Run",
    "Rerun",
    "Done",
    "Undone",
    "Begun",
    "Written",
    "Rewritten",
    "Taken",
    "Given",
    "Found",
    "Lost",
    "Sold",
    "Bought",
    "Set",
    "Reset",
    "Put",
    "Split",
    "Shut",
    "Hit",
    "Read",
    "Won",
    "Kept",
    "Left",
    "Met",
    "Spent",
    "Bound",
    "Drawn",
    "Withdrawn",
    "Known",
    "Shown",
    "Seen",
    "Chosen",
    "Frozen",
    "Broken",
    "Spoken",
    "Stolen",
    "Torn",
    "Worn",
    "Thrown",
    "Grown",
    "Flown",
    "Blown",
    "Forgotten",
    "Hidden",
    "Ridden",
    "Risen",
    "Driven",
    "Eaten",
    "Fallen",
    "Got",
    "Gotten",
    "Forgiven",
    "Dealt",
    "Felt",
    "Led",
    "Fed",
    "Fled",
    "Fought",
    "Taught",
    "Thought",
    "Caught",
    "Brought",
    "Sought",
    "Told",
    "Lent",
    "Bent",
    "Struck",
    "Stuck",
    "Hung",
    "Rung",
    "Sung",
    "Swung",
    "Spun",
    "Overridden",
    "Cut",
    "Let",
    "Quit",
    "Cast",
    "Forecast",
    "Broadcast",
    "Cost",
    "Hurt",
    "Shed",
    "Spread",
    "Burst",
    "Lit",
    "Sent",
    "Undergone",
    "Gone",
    "Become",
    "Come",
    "Overcome",
];

/// Particles of phrasal verbs accepted after the past-tense verb (`RolledBack`, `SignedUp`).
const PARTICLES: &[&str] = &["Back", "Up", "Out", "Down", "Off", "Over", "In", "Away"];

/// A validated message type name (the catalog key and the `cs-event-type` property).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(String);

impl EventType {
    /// Validates an event name (`NounVerbPastTense`, optional `V<n>` suffix).
    pub fn event(name: impl Into<String>) -> Result<Self, EnvelopeError> {
        Self::parse(name, MessageKind::Event)
    }

    /// Validates a command name (`VerbNoun`, optional `V<n>` suffix).
    pub fn command(name: impl Into<String>) -> Result<Self, EnvelopeError> {
        Self::parse(name, MessageKind::Command)
    }

    /// Validates `name` under the naming rule of `kind`.
    pub fn parse(name: impl Into<String>, kind: MessageKind) -> Result<Self, EnvelopeError> {
        let name = name.into();
        match check(&name, kind) {
            Ok(()) => Ok(Self(name)),
            Err(reason) => Err(EnvelopeError::InvalidEventType {
                value: name,
                reason,
            }),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `V<n>` suffix's number, or 1 when there is none.
    pub fn major_version(&self) -> u32 {
        split_version(&self.0).1.unwrap_or(1)
    }
}

/// Splits `ArtifactCreatedV2` into (`ArtifactCreated`, Some(2)).
fn split_version(name: &str) -> (&str, Option<u32>) {
    if let Some(pos) = name.rfind('V') {
        let digits = &name[pos + 1..];
        if pos > 0
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = digits.parse::<u32>()
        {
            return (&name[..pos], Some(n));
        }
    }
    (name, None)
}

/// The number of PascalCase words of `name` (ASCII) and its last two words (the first of the
/// two is empty when there is only one). Allocation-free: it runs for every message.
fn last_words(name: &str) -> (usize, &str, &str) {
    let (mut count, mut prev, mut last) = (1, 0, 0);
    for (i, b) in name.bytes().enumerate().skip(1) {
        if b.is_ascii_uppercase() {
            count += 1;
            (prev, last) = (last, i);
        }
    }
    let before = if count >= 2 { &name[prev..last] } else { "" };
    (count, before, &name[last..])
}

/// How many names that passed [`check`] each thread remembers.
const KNOWN_VALID: usize = 8;

thread_local! {
    /// Names that passed [`check`] on this thread, oldest first: a consumer or publisher sees
    /// the same few types over and over, and comparing a name costs less than the rule.
    static VALID: std::cell::RefCell<Vec<(MessageKind, Box<str>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks `name` under the naming rule of `kind`; the reason when it breaks it. A name that
/// passed on this thread recently is not checked again.
pub(crate) fn check(name: &str, kind: MessageKind) -> Result<(), String> {
    let known = VALID.with(|v| {
        v.borrow()
            .iter()
            .any(|(k, n)| *k == kind && n.as_ref() == name)
    });
    if known {
        return Ok(());
    }
    check_rule(name, kind)?;
    VALID.with(|v| {
        let mut v = v.borrow_mut();
        if v.len() == KNOWN_VALID {
            v.remove(0);
        }
        v.push((kind, name.into()));
    });
    Ok(())
}

/// The naming rule of `kind`, applied to `name`.
fn check_rule(name: &str, kind: MessageKind) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 128 {
        return Err("must be at most 128 characters".into());
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("must be PascalCase letters and digits only".into());
    }
    if !name.as_bytes()[0].is_ascii_uppercase() {
        return Err("must start with an uppercase letter (PascalCase)".into());
    }
    let (base, version) = split_version(name);
    if version == Some(0) || version == Some(1) {
        return Err("a version suffix starts at V2 (V1 is the unsuffixed name)".into());
    }
    let (count, before_last, last_word) = last_words(base);
    if count < 2 {
        return Err(match kind {
            MessageKind::Event => "must be NounVerbPastTense, e.g. ArtifactCreated".into(),
            MessageKind::Command => "must be VerbNoun, e.g. AssignAgentTask".into(),
        });
    }
    if kind == MessageKind::Event {
        // A phrasal verb may end in a particle: `RuntimeDeploymentRolledBack`, `TenantSignedUp`.
        let mut last = last_word;
        if PARTICLES.contains(&last) && count >= 3 {
            last = before_last;
        }
        let past = |x: &str| x.ends_with("ed") || IRREGULAR_PAST.contains(&x);
        if !past(last) {
            return Err(format!(
                "must end in a past-tense verb (NounVerbPastTense, e.g. ArtifactCreated); `{last}` is not"
            ));
        }
    }
    Ok(())
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EventType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    /// Deserializes without the event/command rule (the envelope applies it with its kind).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(EventType(String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name remembered as valid for one kind is still checked under the other's rule, and a
    /// rejected name is rejected every time.
    #[test]
    fn remembered_names_keep_their_kind() {
        for _ in 0..2 {
            assert!(EventType::parse("AssignAgentTask", MessageKind::Command).is_ok());
            assert!(EventType::parse("AssignAgentTask", MessageKind::Event).is_err());
            assert!(EventType::parse("artifactCreated", MessageKind::Event).is_err());
        }
        // More names than are remembered: the oldest are checked again, with the same verdict.
        for i in 2..(KNOWN_VALID + 4) {
            let name = format!("ArtifactCreatedV{i}");
            assert!(
                EventType::parse(name.as_str(), MessageKind::Event).is_ok(),
                "{name}"
            );
        }
        assert!(EventType::parse("AssignAgentTask", MessageKind::Command).is_ok());
        assert!(EventType::parse("AssignAgentTask", MessageKind::Event).is_err());
    }

    #[test]
    fn seed_catalog_names_are_valid_events() {
        for n in [
            "ProjectCreated",
            "BlueprintValidated",
            "WorkflowStepReady",
            "ChunksReady",
            "ModelInvoked",
            "SloBreached",
            "PullRequestOpened",
            "ArtifactCreatedV2",
            "RuntimeDeploymentRolledBack",
            "TenantSignedUp",
        ] {
            EventType::event(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn bad_event_names() {
        for n in [
            "",
            "created",
            "Created",
            "CreateArtifact",
            "Artifact_Created",
            "ArtifactCreatedV1",
            "artifactCreated",
            "DeploymentBack",
            "RuntimeDeploymentRollBack",
        ] {
            assert!(EventType::event(n).is_err(), "{n} accepted");
        }
    }

    #[test]
    fn commands_are_verb_noun() {
        assert!(EventType::command("AssignAgentTask").is_ok());
        assert!(EventType::command("Assign").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(
            EventType::event("ArtifactCreatedV3")
                .unwrap()
                .major_version(),
            3
        );
        assert_eq!(
            EventType::event("ArtifactCreated").unwrap().major_version(),
            1
        );
    }
}
