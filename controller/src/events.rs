//! Kubernetes Events for what translation found: a Warning on the object at fault for
//! each diagnostic when it first appears, and a Normal `Sync` when an Ingress is first
//! admitted. A steady state sends nothing; a problem that goes away and comes back is
//! reported again. Only the leader reports, so replicas do not repeat each other.

use crate::metrics::ControllerMetrics;
use crate::sync::Outcome;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use portico_translate::{Diagnostic, ObjectKey, ObjectRef};
use std::collections::BTreeSet;
use std::sync::Arc;

pub struct EventReporter {
    recorder: Recorder,
    metrics: Arc<ControllerMetrics>,
    reported: BTreeSet<Diagnostic>,
    admitted: BTreeSet<ObjectKey>,
}

fn api_version(kind: &str) -> &'static str {
    match kind {
        "Ingress" | "IngressClass" => "networking.k8s.io/v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "GatewayClass" | "Gateway" | "HTTPRoute" | "GRPCRoute" => "gateway.networking.k8s.io/v1",
        "ReferenceGrant" => "gateway.networking.k8s.io/v1beta1",
        _ => "v1",
    }
}

fn reference(object: &ObjectRef, outcome: &Outcome) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version(object.kind).to_string()),
        kind: Some(object.kind.to_string()),
        namespace: (!object.namespace.is_empty()).then(|| object.namespace.clone()),
        name: Some(object.name.clone()),
        uid: outcome
            .state
            .uid(object.kind, &object.namespace, &object.name),
        ..Default::default()
    }
}

impl EventReporter {
    pub fn new(client: Client, instance: String, metrics: Arc<ControllerMetrics>) -> Self {
        let reporter = Reporter {
            controller: "portico-controller".into(),
            instance: Some(instance),
        };
        EventReporter {
            recorder: Recorder::new(client, reporter),
            metrics,
            reported: BTreeSet::new(),
            admitted: BTreeSet::new(),
        }
    }

    /// Forgets what was reported, so that a controller that leads again reports afresh.
    pub fn reset(&mut self) {
        self.reported.clear();
        self.admitted.clear();
    }

    pub async fn report(&mut self, outcome: &Outcome) {
        let current: BTreeSet<Diagnostic> = outcome.diagnostics.iter().cloned().collect();
        for d in current.difference(&self.reported) {
            let event = Event {
                type_: EventType::Warning,
                reason: d.reason.as_str().to_string(),
                note: Some(truncate(&d.message)),
                action: "Translate".into(),
                secondary: None,
            };
            self.publish(&event, &reference(&d.object, outcome)).await;
        }
        self.reported = current;

        let admitted: BTreeSet<ObjectKey> = outcome.admitted.iter().cloned().collect();
        for (namespace, name) in admitted.difference(&self.admitted) {
            let object = ObjectRef {
                kind: "Ingress",
                namespace: namespace.clone(),
                name: name.clone(),
            };
            let event = Event {
                type_: EventType::Normal,
                reason: "Sync".into(),
                note: Some("Scheduled for sync".into()),
                action: "Admit".into(),
                secondary: None,
            };
            self.publish(&event, &reference(&object, outcome)).await;
        }
        self.admitted = admitted;
    }

    async fn publish(&self, event: &Event, reference: &ObjectReference) {
        let kind = if event.type_ == EventType::Warning {
            "Warning"
        } else {
            "Normal"
        };
        match self.recorder.publish(event, reference).await {
            Ok(()) => self.metrics.events.with_label_values(&[kind]).inc(),
            Err(e) => {
                tracing::warn!(reason = %event.reason, object = ?reference.name, error = %e, "emitting an Event failed")
            }
        }
    }
}

/// Event notes are limited to 1 KiB by the API server.
fn truncate(message: &str) -> String {
    const MAX: usize = 1024;
    if message.len() <= MAX {
        return message.to_string();
    }
    let mut end = MAX - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}
