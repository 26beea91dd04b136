//! Cluster objects in, a snapshot and its diagnostics out: Ingress v1 semantics as the
//! Kubernetes documentation defines them, as one pure function.
//!
//! Modelled on Contour's `internal/dag`: [`ClusterState`] keeps the objects that matter,
//! [`translate`] runs one processor per kind, and every problem becomes a [`Diagnostic`]
//! on the object that caused it, never a failure of the whole translation.

mod annotations;
mod backend;
mod builder;
mod cache;
mod class;
pub mod compat;
pub mod controller_config;
mod credentials;
mod diagnostic;
pub mod gateway;
mod ingress;
mod merge;
mod secret;
mod sharing;
mod streams;

pub use builder::{translate, Options, Translation, Translator};
pub use cache::{
    external_name, ClusterState, KubeObject, NameResolution, ObjectKey, ObjectKind, ResolvedNames,
};
pub use diagnostic::{Diagnostic, ObjectRef, Reason};
pub use sharing::HostOwnership;
pub use streams::StreamOptions;

/// The `spec.controller` value of IngressClasses Portico serves.
pub const CONTROLLER_NAME: &str = "portico.io/ingress-controller";

#[cfg(test)]
mod tests;
