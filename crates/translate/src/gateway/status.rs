//! The status Gateway API asks of a controller, as plain values: conditions without
//! their transition times (the controller keeps those), per GatewayClass, Gateway
//! listener and route parent. Collected by the processors, written by the leader.

use crate::cache::ObjectKey;
use crate::gateway::types::{ParentReference, RouteGroupKind};
use std::collections::BTreeMap;

/// One condition, as `metav1.Condition` without `lastTransitionTime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

impl StatusCondition {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
        generation: Option<i64>,
    ) -> Self {
        StatusCondition {
            type_,
            status,
            reason,
            message: message.into(),
            observed_generation: generation,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerState {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<StatusCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayState {
    pub conditions: Vec<StatusCondition>,
    pub listeners: Vec<ListenerState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteParentState {
    pub parent: ParentReference,
    pub conditions: Vec<StatusCondition>,
}

/// Everything Portico says about the Gateway API objects it serves. Objects of other
/// controllers are absent: their status is not ours to write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayApiStatus {
    /// By GatewayClass name.
    pub classes: BTreeMap<String, Vec<StatusCondition>>,
    pub gateways: BTreeMap<ObjectKey, GatewayState>,
    /// The parents of each HTTPRoute that are Portico's Gateways.
    pub http_routes: BTreeMap<ObjectKey, Vec<RouteParentState>>,
    /// The same for each GRPCRoute.
    pub grpc_routes: BTreeMap<ObjectKey, Vec<RouteParentState>>,
    /// The same for each TCPRoute, UDPRoute and TLSRoute, by kind, namespace and name.
    pub l4_routes: BTreeMap<(String, String, String), Vec<RouteParentState>>,
}
